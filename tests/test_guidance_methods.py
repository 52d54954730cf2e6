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
