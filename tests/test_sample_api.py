"""difflab.sample: seeds and batch invariance, guidance, and validation before any compute."""

import math

import pytest
import torch

import difflab
from difflab.samplers import SAMPLERS
from difflab.testing.gaussian import GaussianMixture, NativeModel

GAUSS = GaussianMixture.gaussian([0.5, -1.0, 2.0], [0.04, 1.0, 0.25])
VP = difflab.NoiseSchedule.scaled_linear()
ZSNR = difflab.NoiseSchedule.scaled_linear(rescale_zero_terminal_snr=True)


def run(name, seeds, schedule=ZSNR, steps=6, **kw):
    model = NativeModel(GAUSS, schedule, "v_prediction")
    return difflab.sample(model, schedule, "v_prediction", name, steps, shape=(len(seeds), 3), seeds=seeds, **kw)


@pytest.mark.parametrize("name", SAMPLERS)
def test_batch_equals_single_runs(name):
    seeds = [11, 3, 2**40, 7]
    batch = run(name, seeds)
    singles = torch.cat([run(name, [seed]) for seed in seeds])
    assert torch.allclose(batch, singles, atol=1e-5)
    assert torch.equal(run(name, seeds), batch)  # same seeds, identical results


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "ddpm", "lcm"])
def test_stochastic_steps_use_fresh_noise_per_seed(name):
    a, b = run(name, [0, 1], ZSNR), run(name, [1, 0], ZSNR)
    assert torch.allclose(a, b.flip(0), atol=1e-6) and not torch.allclose(a[0], a[1])


def test_noise_streams_are_independent_of_batch_and_step():
    streams = difflab.NoiseStreams([5, 6])
    like = torch.zeros(2, 4)
    assert torch.equal(streams(like, 3)[1], difflab.NoiseStreams([6])(like[:1], 3)[0])
    assert not torch.equal(streams(like, 3), streams(like, 4))
    assert not torch.equal(streams(like, 3, 0), streams(like, 3, 1))
    initial = streams.initial((2, 10000))
    assert abs(initial.mean()) < 0.03 and abs(initial.std() - 1) < 0.03


def test_explicit_noise_equals_seeded_noise():
    seeds = [4, 9]
    z = difflab.NoiseStreams(seeds).initial((2, 3))
    model = NativeModel(GAUSS, VP, "epsilon")
    a = difflab.sample(model, VP, "epsilon", "dpmpp_2m", 5, noise=z)
    b = difflab.sample(model, VP, "epsilon", "dpmpp_2m", 5, shape=(2, 3), seeds=seeds)
    assert torch.equal(a, b)


class Conditional(torch.nn.Module):
    """eps-model of a point mass whose location is the conditioning ``c``: x0 = c exactly."""

    def forward(self, x_t, t, c):
        sigma = VP.sigma(t.double())
        alpha, sigma_t = (v[:, None].float() for v in VP.alpha_sigma(sigma))
        return (x_t - alpha * c) / sigma_t


def test_cfg_extrapolates_between_cond_and_uncond():
    cond, uncond = {"c": torch.ones(2, 3)}, {"c": torch.zeros(2, 3)}
    out = difflab.sample(Conditional(), VP, "epsilon", "euler", 8, shape=(2, 3), seeds=[0, 1], cond=cond,
                         uncond=uncond, guidance_scale=3.0)
    assert torch.allclose(out, torch.full((2, 3), 3.0), atol=1e-4)  # x0_u + 3 (x0_c - x0_u)
    plain = difflab.sample(Conditional(), VP, "epsilon", "euler", 8, shape=(2, 3), seeds=[0, 1], cond=cond)
    assert torch.allclose(plain, torch.ones(2, 3), atol=1e-4)


def test_cfg_runs_one_batched_forward_and_pads_token_lengths():
    calls = []

    def model(x_t, t, context, context_mask):
        calls.append((x_t.shape[0], context.shape))
        return torch.zeros_like(x_t)

    cfg = difflab.CFG(difflab.Denoiser(model, VP, "epsilon"), scale=5.0)
    cond = {"context": torch.ones(2, 7, 4), "context_mask": torch.ones(2, 7, dtype=torch.bool)}
    uncond = {"context": torch.ones(2, 3, 4), "context_mask": torch.ones(2, 3, dtype=torch.bool)}
    cfg(torch.randn(2, 5), 1.0, cond=cond, uncond=uncond)
    assert calls == [(4, torch.Size([4, 7, 4]))]


def test_guidance_rescale_matches_conditional_std():
    def model(x_t, t, c):
        return x_t * c  # an eps model whose output scales with c
    den = difflab.Denoiser(model, VP, "epsilon")
    x, sigma = torch.randn(3, 64), 2.0
    cond, uncond = {"c": torch.full((3, 1), 1.0)}, {"c": torch.full((3, 1), 0.2)}
    rescaled = difflab.CFG(den, 7.0, rescale=1.0)(x, sigma, cond=cond, uncond=uncond)
    eps, eps_cond = (x - rescaled) / sigma, (x - den(x, sigma, c=cond["c"])) / sigma
    assert torch.allclose(eps.std(dim=1), eps_cond.std(dim=1), rtol=1e-4)


@pytest.mark.parametrize("kwargs,message", [
    (dict(steps=0), "steps"), (dict(steps=2.5), "steps"), (dict(sampler="euler_a"), "unknown sampler"),
    (dict(spacing="uniform"), "spacing"), (dict(prediction_type="eps"), "prediction_type"),
    (dict(seeds=[0, 1, 2]), "seeds"), (dict(seeds=[-1, 2]), "seed"), (dict(guidance_scale=math.nan), "guidance_scale"),
    (dict(guidance_scale=7.5), "uncond"), (dict(shape=(2, 0)), "shape"), (dict(shape=None), "exactly one"),
    (dict(sampler_options={"etaa": 1.0}), "options"), (dict(guidance_rescale=2.0), "guidance_rescale"),
])
def test_bad_arguments_are_refused_before_any_compute(kwargs, message):
    calls = []

    def model(x_t, t):
        calls.append(1)
        return x_t

    args = dict(schedule=VP, prediction_type="epsilon", sampler="euler", steps=4, shape=(2, 3), seeds=[0, 1])
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        difflab.sample(model, **args)
    assert calls == []


def test_epsilon_model_cannot_start_from_pure_noise():
    with pytest.raises(ValueError, match="pure noise"):
        difflab.sample(lambda x, t: x, ZSNR, "epsilon", "euler", 4, shape=(1, 2))
    flow = difflab.NoiseSchedule.flow()
    with pytest.raises(ValueError, match="pure noise"):
        difflab.sample(lambda x, t: x, flow, "epsilon", "euler", 4, shape=(1, 2))


def test_progress_bar_counts_model_evaluations(capsys):
    counted = []

    def model(x_t, t):
        counted.append(1)
        return torch.zeros_like(x_t)

    difflab.sample(model, VP, "epsilon", "heun", 5, shape=(1, 2), progress=True)
    assert len(counted) == difflab.samplers.SAMPLER_INFO["heun"].evals(5) == 9
    assert "9/9" in capsys.readouterr().err
