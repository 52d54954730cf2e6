"""Guidance beyond plain CFG (issue 16, item 2): APG and CFG-Zero* against their defining formulas,
and through the pipeline (recorded in the recipe, replayed exactly, bad names refused)."""

import math

import numpy as np
import pytest
import torch

from difflab.guidance import APG, CFG, CFGZeroStar
from difflab.pipelines import Pipeline, read_recipe
from difflab.train import Trainer, preset


class Fixed:
    """A denoiser returning given x0 predictions: cond for the first half of a batch, uncond for the second."""

    def __init__(self, x0_cond, x0_uncond):
        self.x0_cond, self.x0_uncond = x0_cond, x0_uncond

    def __call__(self, x, sigma, **kwargs):
        return torch.cat([self.x0_cond, self.x0_uncond])


COND, UNCOND = {"c": torch.zeros(2, 1)}, {"c": torch.ones(2, 1)}
X = torch.randn(2, 3, 4, 4)


def run(guidance, sigma=2.0):
    return guidance(X, torch.full((2,), sigma), cond=COND, uncond=UNCOND)


def test_apg_without_momentum_and_with_the_parallel_part_is_cfg():
    c, u = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    plain = run(CFG(Fixed(c, u), 4.0))
    assert torch.allclose(run(APG(Fixed(c, u), 4.0, eta=1.0, momentum=0.0)), plain, atol=1e-5)


def test_apg_drops_the_update_parallel_to_the_conditional_prediction():
    c, u = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    out = run(APG(Fixed(c, u), 4.0, eta=0.0, momentum=0.0))
    along = ((out - c) * c).flatten(1).sum(1)
    assert torch.allclose(along, torch.zeros(2), atol=1e-4)
    assert not torch.allclose(out, c)                                   # the orthogonal part remains


def test_apg_momentum_and_norm_threshold():
    c1, u1, c2, u2 = (torch.randn(2, 3, 4, 4) for _ in range(4))
    denoiser = Fixed(c1, u1)
    apg = APG(denoiser, 3.0, eta=1.0, momentum=-0.5)
    run(apg)
    denoiser.x0_cond, denoiser.x0_uncond = c2, u2
    out = run(apg)
    delta = (c2 - u2) - 0.5 * (c1 - u1)                                  # delta + momentum * previous average
    assert torch.allclose(out, c2 + 2.0 * delta, atol=1e-5)
    clipped = APG(Fixed(c1, u1), 3.0, eta=1.0, momentum=0.0, norm_threshold=0.1)
    update = (run(clipped) - c1) / 2.0
    assert torch.allclose(update.flatten(1).norm(dim=1), torch.full((2,), 0.1), atol=1e-5)


def test_cfg_zero_star_leaves_a_proportional_unconditional_velocity_unguided():
    sigma = 2.0
    d_c = torch.randn(2, 3, 4, 4)
    c, u = X - sigma * d_c, X - sigma * (0.5 * d_c)                    # d_u = 0.5 d_c: s* = 2, s* d_u = d_c
    out = run(CFGZeroStar(Fixed(c, u), 5.0), sigma)
    assert torch.allclose(out, c, atol=1e-5)                            # nothing left to extrapolate
    assert not torch.allclose(run(CFG(Fixed(c, u), 5.0), sigma), c)   # plain CFG extrapolates
    plain_at_inf = run(CFG(Fixed(c, u), 5.0), math.inf)
    assert torch.equal(run(CFGZeroStar(Fixed(c, u), 5.0), math.inf), plain_at_inf)  # no velocity at sigma = inf


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    Trainer(preset("tiny").replace(max_steps=3, checkpoint_every=0, threads=1), out, log=lambda *a: None).fit()
    return Pipeline.from_pretrained(out / "model")


@pytest.mark.parametrize("method", ["apg", "cfg_zero_star"])
def test_the_method_is_recorded_and_replays(pipe, tmp_path, method):
    plain = pipe("a red circle", seed=3, steps=4, guidance_scale=6.0)
    guided = pipe("a red circle", seed=3, steps=4, guidance_scale=6.0, guidance_method=method)
    assert "guidance_method" not in plain.recipes[0] and guided.recipes[0]["guidance_method"] == method
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(guided.images[0]))
    again = pipe.replay(read_recipe(guided.save(tmp_path)[0]))
    assert np.array_equal(np.asarray(guided.images[0]), np.asarray(again.images[0]))
    with pytest.raises(ValueError, match="guidance_method must be one of cfg, apg, cfg_zero_star"):
        pipe("a red circle", guidance_method="pag")


# ----- CFG++ (Chung et al. 2024) -----------------------------------------------------------------
from difflab import NoiseSchedule, sample                                      # noqa: E402
from difflab.guidance import CFGPlusPlus                                       # noqa: E402
from difflab.testing.gaussian import GaussianMixture, NativeModel             # noqa: E402

COND_DATA = GaussianMixture([0.5, 0.5], [[1.5, -1.0, 0.5], [-0.5, 2.0, 1.0]], [[0.2] * 3, [0.3] * 3])
UNCOND_DATA = GaussianMixture.gaussian([0.0, 0.5, -0.5], [1.0] * 3)


class Conditional(torch.nn.Module):
    """Exact eps predictions of COND_DATA where c = 0 and of UNCOND_DATA where c = 1."""

    def __init__(self, schedule, cond=COND_DATA, uncond=UNCOND_DATA):
        super().__init__()
        self.c_model, self.u_model = NativeModel(cond, schedule, "epsilon"), NativeModel(uncond, schedule, "epsilon")

    def forward(self, x_t, t, c):
        return torch.where(c == 0, self.c_model(x_t, t), self.u_model(x_t, t))


def papers_ddim_cfg_pp(z, sigmas, lam):
    """CFG++'s Algorithm 1 written out in VP coordinates (abar = 1 / (1 + sigma^2)), in float64:
    x0 = (x - sqrt(1 - abar) eps_lam) / sqrt(abar), x' = sqrt(abar') x0 + sqrt(1 - abar') eps_u."""
    def eps(data, x, abar, sigma):
        x0 = data.denoise(x / abar.sqrt(), sigma)
        return (x - abar.sqrt() * x0) / (1 - abar).sqrt()

    x = z.double()
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        abar, abar_next = (torch.tensor(1 / (1 + s * s), dtype=torch.float64) for s in (sigma, sigma_next))
        e_c, e_u = eps(COND_DATA, x, abar, sigma), eps(UNCOND_DATA, x, abar, sigma)
        e_lam = e_u + lam * (e_c - e_u)
        x0 = (x - (1 - abar).sqrt() * e_lam) / abar.sqrt()
        x = abar_next.sqrt() * x0 + (1 - abar_next).sqrt() * e_u
    return x


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
@pytest.mark.parametrize("lam", [0.0, 0.4, 1.0])
def test_cfg_pp_is_the_papers_algorithm_in_vp_coordinates(sampler, lam):
    schedule = NoiseSchedule.linear()
    sigmas = schedule.sigmas(8, "leading")
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    ours = sample(Conditional(schedule), schedule, "epsilon", sampler, 8, noise=z, spacing="leading",
                  cond={"c": torch.zeros(6, 1)}, uncond={"c": torch.ones(6, 1)}, guidance_scale=lam,
                  guidance_method="cfg_pp")
    assert torch.allclose(ours.double(), papers_ddim_cfg_pp(z, sigmas, lam), atol=2e-4)
    plain = sample(Conditional(schedule), schedule, "epsilon", sampler, 8, noise=z, spacing="leading",
                   cond={"c": torch.zeros(6, 1)}, uncond={"c": torch.ones(6, 1)}, guidance_scale=lam)
    if lam > 0:                                      # at 0 both are the unconditional model exactly
        assert (ours - plain).abs().max() > 1e-2    # CFG++ renoises with eps_u, so it is not CFG at lambda


def test_cfg_pp_with_equal_predictions_is_the_unguided_sampler():
    schedule = NoiseSchedule.linear()
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    same = Conditional(schedule, COND_DATA, COND_DATA)
    args = dict(noise=z, cond={"c": torch.zeros(4, 1)}, uncond={"c": torch.ones(4, 1)})
    ours = sample(same, schedule, "epsilon", "euler", 10, guidance_scale=0.7, guidance_method="cfg_pp", **args)
    unguided = sample(same, schedule, "epsilon", "euler", 10, noise=z, cond={"c": torch.zeros(4, 1)})
    assert torch.allclose(ours, unguided, atol=1e-5)


def test_cfg_pp_from_pure_noise_returns_the_guided_x0_at_the_first_and_last_points():
    c, u = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    wrapper = CFGPlusPlus(Fixed(c, u), 0.5, sigmas=[math.inf, 3.0, 1.0, 0.0])
    assert torch.allclose(run(wrapper, math.inf), u + 0.5 * (c - u))
    assert torch.allclose(run(wrapper, 1.0), u + 0.5 * (c - u))
    r = 1.0 / 3.0                                  # at sigma 3 the next point is 1: x0' + r (x - x0') = x0_g + r (x - x0_u)
    out = run(wrapper, 3.0)
    assert torch.allclose(out + r * (X - out), u + 0.5 * (c - u) + r * (X - u), atol=1e-5)
    with pytest.raises(RuntimeError, match="not a point of its grid"):
        run(wrapper, 2.0)
    with pytest.raises(ValueError, match=r"lambda in \[0, 1\]"):
        CFGPlusPlus(Fixed(c, u), 2.0, sigmas=[3.0, 0.0])


def test_cfg_pp_refusals():
    schedule = NoiseSchedule.linear()
    model, z = Conditional(schedule), torch.randn(2, 3)
    args = dict(noise=z, cond={"c": torch.zeros(2, 1)}, uncond={"c": torch.ones(2, 1)}, guidance_method="cfg_pp")
    with pytest.raises(ValueError, match="works with the samplers euler, ddim .deterministic., not 'deis'"):
        sample(model, schedule, "epsilon", "deis", 4, guidance_scale=0.5, **args)
    with pytest.raises(ValueError, match="not 'ddim'"):
        sample(model, schedule, "epsilon", "ddim", 4, guidance_scale=0.5, sampler_options={"eta": 0.5}, **args)
    with pytest.raises(ValueError, match=r"lambda in \[0, 1\]"):
        sample(model, schedule, "epsilon", "euler", 4, guidance_scale=3.0, **args)
    with pytest.raises(ValueError, match="guidance_rescale does not apply"):
        sample(model, schedule, "epsilon", "euler", 4, guidance_scale=0.5, guidance_rescale=0.7, **args)
    with pytest.raises(ValueError, match="needs uncond"):
        sample(model, schedule, "epsilon", "euler", 4, noise=z, cond={"c": torch.zeros(2, 1)}, guidance_scale=1.0,
               guidance_method="cfg_pp")


def test_cfg_pp_through_the_pipeline_is_recorded_and_replays(pipe, tmp_path):
    seen = {"cfg": [], "cfg_pp": []}
    guided = pipe("a red circle", seed=3, steps=4, sampler="euler", guidance_scale=1.0, guidance_method="cfg_pp",
                  callback=lambda state: seen["cfg_pp"].append(state["x"]))
    pipe("a red circle", seed=3, steps=4, sampler="euler", guidance_scale=1.0,
         callback=lambda state: seen["cfg"].append(state["x"]))
    assert guided.recipes[0]["guidance_method"] == "cfg_pp" and guided.recipes[0]["guidance_scale"] == 1.0
    assert torch.equal(seen["cfg"][0], seen["cfg_pp"][0])             # the same start
    assert not torch.equal(seen["cfg"][2], seen["cfg_pp"][2])         # lambda 1 still renoises with eps_u
    again = pipe.replay(read_recipe(guided.save(tmp_path)[0]))
    assert np.array_equal(np.asarray(guided.images[0]), np.asarray(again.images[0]))
    with pytest.raises(ValueError, match="not 'deis'"):
        pipe("a red circle", steps=4, sampler="deis", guidance_scale=0.5, guidance_method="cfg_pp")
