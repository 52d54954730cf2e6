"""Parameterizations against their closed forms: Karras et al. (2022) Table 1, Song et al. (2023)
eq. 7, the exact Gaussian denoiser, and the exact probability-flow ODE on grids ending above 0."""

import math

import pytest
import torch

import difflab
from difflab.parameterization import EDM, PARAMETERIZATIONS, Consistency, get_parameterization
from difflab.train.objectives.denoising import diffusion_loss

SIGMAS = torch.tensor([0.002, 0.05, 0.5, 1.0, 3.0, 40.0], dtype=torch.float64)
SCHEDULES = [difflab.NoiseSchedule.scaled_linear(), difflab.NoiseSchedule.flow(shift=3.0)]


@pytest.mark.parametrize("name", list(PARAMETERIZATIONS))
@pytest.mark.parametrize("schedule", SCHEDULES, ids=["vp", "flow"])
def test_the_target_maps_back_to_x0(name, schedule):
    """x0 = c_skip * x_in + c_out * F at F = target, with x_in = c_in * (x0 + sigma * eps)."""
    torch.manual_seed(0)
    p = get_parameterization(name)
    sigma = SIGMAS[1:]  # consistency's c_out vanishes at its sigma_min
    alpha, sigma_t = schedule.alpha_sigma(sigma)
    x0, noise = torch.randn(len(sigma), 3, 4, 4, dtype=torch.float64), torch.randn(len(sigma), 3, 4, 4, dtype=torch.float64)
    a, s = alpha.view(-1, 1, 1, 1), sigma_t.view(-1, 1, 1, 1)
    x_in = p.c_in(a, s) * (x0 + sigma.view(-1, 1, 1, 1) * noise)
    c_skip, c_out = p.coefficients(a, s)
    torch.testing.assert_close(c_skip * x_in + c_out * p.target(x0, noise, a, s), x0)


def test_edm_scalings_are_karras_table_1():
    p, sd = EDM(sigma_data=0.5), 0.5
    alpha, sigma_t = SCHEDULES[0].alpha_sigma(SIGMAS)
    c_in = p.c_in(alpha, sigma_t)
    c_skip_in, c_out = p.coefficients(alpha, sigma_t)
    torch.testing.assert_close(c_in, 1 / torch.sqrt(SIGMAS**2 + sd**2))
    torch.testing.assert_close(c_skip_in * c_in, sd**2 / (SIGMAS**2 + sd**2))      # c_skip acting on x
    torch.testing.assert_close(c_out, SIGMAS * sd / torch.sqrt(SIGMAS**2 + sd**2))


def test_consistency_boundary_condition_holds_exactly_at_sigma_min():
    """f(x, sigma_min) = x whatever the network outputs (Song et al. 2023, eq. 7)."""
    p = Consistency(sigma_data=0.5, sigma_min=0.002)
    schedule = difflab.NoiseSchedule.scaled_linear()
    denoiser = difflab.Denoiser(lambda x_in, t: torch.full_like(x_in, 123.0), schedule, p)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(denoiser(x, 0.002), x)
    assert not torch.allclose(denoiser(x, 0.5), x)


def test_edm_with_a_zero_network_is_the_exact_gaussian_denoiser():
    """For data N(0, sd^2 I), E[x0 | x] = sd^2 / (sd^2 + sigma^2) x, which is EDM's skip path alone."""
    sd = 0.7
    denoiser = difflab.Denoiser(lambda x_in, t: torch.zeros_like(x_in), SCHEDULES[0], EDM(sigma_data=sd))
    x = torch.randn(6, 2, 3, 3, dtype=torch.float64)
    sigma = SIGMAS.to(torch.float64)
    expected = (sd**2 / (sd**2 + sigma**2)).view(-1, 1, 1, 1) * x
    torch.testing.assert_close(denoiser(x, sigma), expected)


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "deis", "unipc", "lms", "ddim", "plms", "dpm_2"])
def test_teacher_steps_on_grids_that_end_above_zero_follow_the_exact_ode(sampler):
    """The probability-flow ODE of N(0, sd^2) data has x(sigma) = x(s0) sqrt((sd^2 + sigma^2) / (sd^2 + s0^2)):
    a sampler given a grid from 2 to 1 (a consistency-distillation teacher step) must land on it."""
    sd = 0.5
    denoiser = difflab.Denoiser(lambda x_in, t: torch.zeros_like(x_in), SCHEDULES[0], EDM(sigma_data=sd))
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    sigmas = torch.linspace(2.0, 1.0, 41, dtype=torch.float64)
    out = difflab.SAMPLERS[sampler](denoiser, x.clone(), sigmas)
    exact = x * math.sqrt((sd**2 + 1.0) / (sd**2 + 4.0))
    assert (out - exact).abs().max().item() < 1e-3 * x.abs().max().item()  # first order: ~4e-4 at 40 steps


def test_a_model_outputting_the_target_has_zero_edm_loss_and_the_edm_input_is_unit_variance():
    schedule = difflab.NoiseSchedule.scaled_linear()
    p = EDM(sigma_data=1.0)
    x0, noise = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([10.0, 300.0, 600.0, 990.0])
    seen = []

    def exact(x_in, time):
        seen.append(x_in)
        alpha, sigma_t = schedule.native_scales(time.double(), x0)
        return p.target(x0, noise, alpha, sigma_t)

    assert diffusion_loss(exact, x0, {}, t, noise, schedule, p).item() < 1e-10
    x_in = seen[0]
    assert 0.8 < x_in.std().item() < 1.2  # c_in scales x0 + sigma * eps to unit variance for unit data


def test_names_options_and_errors():
    assert get_parameterization("v_prediction").name == "v_prediction"
    assert get_parameterization({"type": "edm", "sigma_data": 0.25}).sigma_data == 0.25
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        get_parameterization("velocity")
    with pytest.raises(ValueError, match="sigma_data"):
        get_parameterization({"type": "edm", "sigma_data": -1})
    with pytest.raises(ValueError, match="cannot denoise pure noise"):
        difflab.Denoiser(lambda x, t: x, SCHEDULES[1], "edm")(torch.zeros(1, 1, 2, 2), math.inf)
