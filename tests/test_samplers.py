"""Samplers against closed-form solutions: convergence order on the exact Gaussian PF-ODE, data
statistics of a Gaussian mixture for the stochastic ones, and every prediction type x schedule."""

import math

import pytest
import torch

import difflab
from difflab.samplers import SAMPLER_INFO, SAMPLERS
from difflab.testing.gaussian import GaussianMixture, NativeModel

GAUSS = GaussianMixture.gaussian([0.5, -1.0, 2.0], [0.04, 1.0, 0.25])
MIXTURE = GaussianMixture([0.3, 0.7], [[-2.0], [1.5]], [[0.09], [0.25]])
DETERMINISTIC = [n for n in SAMPLERS if not SAMPLER_INFO[n].stochastic]
STOCHASTIC = [n for n in SAMPLERS if SAMPLER_INFO[n].stochastic]
# Observed order on a Karras grid (sigma 20 -> 2e-3): PLMS assumes equal steps, so it is second
# order on a non-uniform grid; UniPC-2 with its corrector is third order; DEIS-3's rate settles near 3.
EXPECTED_ORDER = {"ddim": 1, "euler": 1, "heun": 2, "dpm_2": 2, "dpmpp_2m": 2, "plms": 2, "lms": 3.5,
                  "unipc": 3, "deis": 2.4}


def karras(n, lo=2e-3, hi=20.0, rho=7.0):
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    sigmas = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def ode_error(name, n, z, **options):
    sigmas = karras(n)
    x = z * sigmas[0]
    out = SAMPLERS[name](lambda x, s: GAUSS.denoise(x, s), x, sigmas, **options)
    return (out - GAUSS.exact_ode_solution(x, float(sigmas[0]))).abs().max().item()


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_converge_at_their_order(name):
    z = torch.randn(32, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    e_coarse, e_fine = ode_error(name, 32, z), ode_error(name, 128, z)
    rate = math.log2(e_coarse / e_fine) / 2
    assert rate > EXPECTED_ORDER[name] - 0.35, f"{name}: observed order {rate:.2f}"


@pytest.mark.parametrize("name,order", [("euler_ancestral", 1), ("dpm_2_ancestral", 2), ("dpmpp_2s_ancestral", 2),
                                        ("dpmpp_sde", 2), ("dpmpp_2m_sde", 2), ("dpmpp_3m_sde", 2)])
def test_stochastic_samplers_with_eta_zero_solve_the_ode(name, order):
    z = torch.randn(32, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    e_coarse, e_fine = ode_error(name, 16, z, eta=0.0), ode_error(name, 64, z, eta=0.0)
    assert math.log(e_coarse / e_fine, 4) > order - 0.35, (e_coarse, e_fine)


def test_ddim_eta_zero_is_euler():
    z = torch.randn(16, 3, dtype=torch.float64)
    assert ode_error("ddim", 10, z) == pytest.approx(ode_error("euler", 10, z), abs=1e-12)


def mixture_stats(samples):
    left = (samples[:, 0] < -0.25).double()
    return left.mean().item(), samples[samples[:, 0] < -0.25].mean().item(), samples[samples[:, 0] > -0.25].std().item()


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_reproduces_a_gaussian_mixture(name):
    """Mixture weight 0.3, component means -2 / 1.5 and std 0.5 within sampling error (n = 4000)."""
    n = 4000
    schedule = difflab.NoiseSchedule.cosine(rescale_zero_terminal_snr=True)  # starts from exact pure noise
    model = NativeModel(MIXTURE, schedule, "v_prediction")
    if name == "lcm":
        model = ConsistencyModel(MIXTURE_GAUSS, schedule)
    out = difflab.sample(model, schedule, "v_prediction", name, 40, shape=(n, 1), seeds=list(range(n)),
                         spacing="trailing")
    if name == "lcm":
        mean, std = out.mean().item(), out.std().item()
        assert abs(mean - 0.5) < 0.05 and abs(std - 0.8) < 0.04
        return
    weight, mean_left, std_right = mixture_stats(out)
    assert abs(weight - 0.3) < 0.03, weight
    assert abs(mean_left + 2.0) < 0.06, mean_left
    assert abs(std_right - 0.5) < 0.05, std_right


MIXTURE_GAUSS = GaussianMixture.gaussian([0.5], [0.64])


class ConsistencyModel(torch.nn.Module):
    """The exact consistency function of a Gaussian (the PF-ODE's flow map to sigma = 0) as a v-model.
    LCM is a sampler for such models; with a plain posterior-mean denoiser it under-disperses."""

    def __init__(self, gaussian, schedule):
        super().__init__()
        self.g, self.schedule = gaussian, schedule

    def forward(self, x_t, t):
        sigma = self.schedule.sigma(t.double())
        alpha, sigma_t = (v[:, None] for v in self.schedule.alpha_sigma(sigma))
        mu, var = self.g.means[0], self.g.variances[0]
        eps_dir = torch.where(torch.isinf(sigma)[:, None], x_t.double(), (x_t.double() / alpha - mu) /
                              torch.sqrt(var + torch.where(torch.isinf(sigma), 0.0, sigma)[:, None] ** 2))
        x0 = mu + eps_dir * var.sqrt()
        eps = torch.where(torch.isinf(sigma)[:, None], x_t.double(), (x_t.double() - alpha * x0) / sigma_t)
        return (alpha * eps - sigma_t * x0).float()


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("schedule", [difflab.NoiseSchedule.scaled_linear(), difflab.NoiseSchedule.flow(shift=3.0)],
                         ids=["vp", "flow"])
def test_every_prediction_type_gives_the_same_samples(name, schedule):
    z = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
    results = {}
    for prediction_type in ("epsilon", "v_prediction", "sample", "flow"):
        if schedule.is_flow and prediction_type == "epsilon":
            continue  # the flow grid starts at pure noise, which eps cannot denoise (tested below)
        model = NativeModel(GAUSS, schedule, prediction_type)
        results[prediction_type] = difflab.sample(model, schedule, prediction_type, name, 12, noise=z,
                                                  seeds=list(range(64)))
    reference = results["sample"]
    assert torch.isfinite(reference).all()
    for prediction_type, out in results.items():
        assert torch.allclose(out, reference, atol=2e-4), prediction_type
    exact = GAUSS.means[0].float() + z * GAUSS.variances[0].sqrt().float()
    if schedule.is_flow and not SAMPLER_INFO[name].stochastic:
        assert (reference - exact).pow(2).mean().sqrt() < 0.3  # same target; accuracy is benchmarked


def test_flow_euler_from_pure_noise_is_exact_for_a_point_mass():
    """With a point mass the velocity is constant, so one Euler step from t = 1 is exact."""
    schedule = difflab.NoiseSchedule.flow()
    point = GaussianMixture.gaussian([0.7, -0.2], [1e-12, 1e-12])
    out = difflab.sample(NativeModel(point, schedule, "flow"), schedule, "flow", "euler", 1, shape=(3, 2), seeds=[0, 1, 2])
    assert torch.allclose(out, torch.tensor([0.7, -0.2]).expand(3, 2), atol=1e-5)


def test_callback_sees_every_step():
    seen = []
    schedule = difflab.NoiseSchedule.scaled_linear()
    difflab.sample(NativeModel(GAUSS, schedule, "epsilon"), schedule, "epsilon", "dpmpp_2m", 7, shape=(2, 3),
                   callback=lambda info: seen.append((info["i"], info["sigma"])))
    assert [i for i, _ in seen] == list(range(7))
    assert all(a > b for (_, a), (_, b) in zip(seen, seen[1:]))
