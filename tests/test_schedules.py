import math

import numpy as np
import pytest
import torch

from difflab import NoiseSchedule

DISCRETE = [NoiseSchedule.linear(), NoiseSchedule.scaled_linear(), NoiseSchedule.cosine()]


def test_alphas_cumprod_match_closed_forms():
    s = NoiseSchedule.linear()
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-12)
    assert s.alphas_cumprod.dtype == torch.float64
    c = NoiseSchedule.cosine()
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    # away from the 0.999 cap, alpha_bar(t) is the closed form ratio f(t)/f(0)
    assert abs(float(c.alphas_cumprod[499]) - f(0.5) / f(0)) < 1e-9


@pytest.mark.parametrize("schedule", DISCRETE + [NoiseSchedule.flow(), NoiseSchedule.scaled_linear(rescale_zero_terminal_snr=True)])
def test_sigma_and_t_are_inverse(schedule):
    t = torch.linspace(0, 998.5, 997, dtype=torch.float64)
    if schedule.is_flow:
        t = torch.linspace(1, 999, 997, dtype=torch.float64)
    back = schedule.t(schedule.sigma(t))
    assert torch.allclose(back, t, atol=1e-6)
    assert torch.all(schedule.sigma(t).diff() > 0)


def test_sigma_at_integer_steps_and_log_interpolation():
    s = NoiseSchedule.scaled_linear()
    ac = s.alphas_cumprod
    expected = ((1 - ac) / ac).sqrt()
    assert torch.allclose(s.sigma(torch.arange(1000)), expected, rtol=1e-12)
    mid = s.sigma(torch.tensor(10.5, dtype=torch.float64))
    assert abs(float(mid) - math.sqrt(float(expected[10] * expected[11]))) < 1e-12


def test_zero_terminal_snr():
    s = NoiseSchedule.scaled_linear(rescale_zero_terminal_snr=True)
    assert float(s.alphas_cumprod[-1]) == 0.0
    assert math.isinf(float(s.sigma(999)))
    assert float(s.snr(999)) == 0.0
    # the first step keeps its signal level (Lin et al. 2023, Algorithm 1)
    assert abs(float(s.alphas_cumprod[0]) - float(NoiseSchedule.scaled_linear().alphas_cumprod[0])) < 1e-12
    grid = s.sigmas(10, "trailing")
    assert math.isinf(float(grid[0])) and float(grid[-1]) == 0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample", "flow"])
@pytest.mark.parametrize("schedule", [NoiseSchedule.cosine(), NoiseSchedule.flow(shift=2.0)])
def test_targets_recover_x0(schedule, prediction_type):
    torch.manual_seed(0)
    x0, noise = torch.randn(6, 3, 4, 4, dtype=torch.float64), torch.randn(6, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 10, 250, 500, 900, 998], dtype=torch.float64)
    x_t = schedule.add_noise(x0, noise, t)
    target = schedule.target(x0, noise, t, prediction_type)
    from difflab.denoisers import Denoiser, append_dims
    den = Denoiser(lambda *_: None, schedule, prediction_type)
    alpha, sigma_t = schedule.alpha_sigma(schedule.sigma(t))
    c_x, c_out = den.output_coefficients(alpha, sigma_t)
    x0_hat = append_dims(c_x, 4) * x_t + append_dims(c_out, 4) * target
    assert torch.allclose(x0_hat, x0, atol=1e-8)


def test_flow_forward_process_is_linear_interpolation():
    s = NoiseSchedule.flow()
    x0, noise = torch.ones(1, 2), torch.full((1, 2), -1.0)
    assert torch.allclose(s.add_noise(x0, noise, torch.tensor([250.0])), torch.full((1, 2), 0.75 - 0.25))
    assert torch.allclose(s.t(s.sigma(torch.tensor(400.0))), torch.tensor(400.0, dtype=torch.float64))


def test_diffusers_timestep_spacings():
    s = NoiseSchedule.scaled_linear()
    ts = s.timesteps(s.sigmas(10, "leading", steps_offset=1)).round()
    assert ts.tolist() == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    ts = s.timesteps(s.sigmas(10, "trailing")).round()
    assert ts.tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    ts = s.timesteps(s.sigmas(4, "linspace"))
    assert torch.allclose(ts, torch.tensor([999, 666, 333, 0], dtype=torch.float64), atol=1e-6)


def test_karras_and_exponential_grids():
    s = NoiseSchedule.scaled_linear()
    k = s.sigmas(8, "karras")
    assert abs(float(k[0]) - s.sigma_max) < 1e-9 and abs(float(k[-2]) - s.sigma_min) < 1e-9
    # Karras et al. eq. 5: sigma^(1/rho) is linear in the step index
    assert torch.allclose(k[:-1].pow(1 / 7).diff(), k[:-1].pow(1 / 7).diff()[0].expand(7), atol=1e-9)
    e = s.sigmas(8, "exponential")
    assert torch.allclose(e[:-1].log().diff(), e[:-1].log().diff()[0].expand(7), atol=1e-9)
    z = NoiseSchedule.scaled_linear(rescale_zero_terminal_snr=True).sigmas(8, "karras")
    assert math.isinf(float(z[0])) and torch.all(torch.isfinite(z[1:])) and len(z) == 9


def test_flow_default_grid_shift():
    s1, s3 = NoiseSchedule.flow(1.0), NoiseSchedule.flow(3.0)
    g1, g3 = s1.sigmas(5), s3.sigmas(5)
    assert math.isinf(float(g1[0])) and float(g1[-1]) == 0
    t1, t3 = (g / (1 + g) for g in (g1[1:-1], g3[1:-1]))
    assert torch.all(t3 > t1)  # shift > 1 spends more steps at high noise


def test_config_round_trip_and_errors():
    s = NoiseSchedule.cosine(rescale_zero_terminal_snr=True)
    assert NoiseSchedule.from_config(s.to_config()) == s
    with pytest.raises(ValueError, match="unknown schedule config"):
        NoiseSchedule.from_config({"kind": "cosine", "bogus": 1})
    with pytest.raises(ValueError, match="kind"):
        NoiseSchedule(kind="sqrt")
    with pytest.raises(ValueError, match="steps"):
        s.sigmas(0)
    with pytest.raises(ValueError, match="spacing"):
        s.sigmas(4, "uniform")
    with pytest.raises(ValueError, match="flow schedules support"):
        NoiseSchedule.flow().sigmas(4, "leading")
