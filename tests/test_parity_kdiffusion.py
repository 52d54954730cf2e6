"""difflab's samplers against k-diffusion's (an independent implementation of the same update rules).

Both run in float32 from the same start x = z * sigmas[0], on the same grid, with the exact
Gaussian-mixture denoiser. Stochastic samplers run with eta = 0 and with eta = 1 under one shared
noise table: k-diffusion asks ``noise_sampler(sigma, sigma_next)``, difflab asks
``noise(like, step, sub)``; both are answered from the same draw of the step.
"""

import math

import pytest
import torch

import difflab
from difflab.samplers import SAMPLERS
from difflab.testing.gaussian import GaussianMixture
from kdiffusion_ref import load_k_sampling

K = load_k_sampling()
MIXTURE = GaussianMixture([0.2, 0.5, 0.3], [[-1.5, 0.5, 2.0, 0.0], [1.0, -0.5, 0.0, 1.0], [0.0, 2.0, -1.0, -2.0]],
                          [[0.04, 0.3, 0.1, 1.0], [0.25, 0.05, 0.5, 0.2], [0.5, 0.1, 0.02, 0.3]])
BATCH, STEPS, TOL = 16, 12, 1e-4

DETERMINISTIC = ["euler", "heun", "dpm_2", "lms", "dpmpp_2m"]
STOCHASTIC = ["euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde",
              "dpmpp_2m_sde_heun", "dpmpp_3m_sde"]
# k-diffusion name and the options both take; the heun variant of dpmpp_2m_sde is an option.
VARIANTS = {"dpmpp_2m_sde_heun": ("dpmpp_2m_sde", {"solver_type": "heun"})}


def grid(kind: str) -> torch.Tensor:
    """A float32 grid both libraries receive as is: a Karras ramp (k-diffusion's own constructor)
    or Stable Diffusion's discrete VP levels at diffusers' 'leading' timesteps."""
    if kind == "karras":
        return K.get_sigmas_karras(STEPS, 0.03, 14.6)
    return difflab.NoiseSchedule.scaled_linear().sigmas(STEPS, "leading").float()


def denoiser(x, sigma, **kwargs):
    return MIXTURE.denoise(x, sigma)


def start(sigmas):
    z = torch.randn(BATCH, 4, generator=torch.Generator().manual_seed(0))
    return z * sigmas[0]


class SharedNoise:
    """One table of draws, indexed by step (and sub-draw), read by both libraries' conventions."""

    def __init__(self, sigmas, subs=1):
        self.sigmas = sigmas.double()
        gen = torch.Generator().manual_seed(1)
        self.table = torch.randn(len(sigmas), subs, BATCH, 4, generator=gen)

    def difflab(self, like, step, sub=0):
        return self.table[step, sub].to(like)

    def step_of(self, sigma) -> int:
        """The grid index of a sigma k-diffusion passes (it may have gone through exp(-log))."""
        return int(torch.argmin((self.sigmas[:-1].log() - math.log(float(sigma))).abs()))

    def k_diffusion(self, sigma, sigma_next):
        return self.table[self.step_of(sigma), 0]

    def k_diffusion_bridge(self, sigma, sigma_next):
        """dpmpp_sde's two draws in a step are increments of one Brownian path over sigma: the first
        over [sigma, sigma_s], the second over [sigma, sigma_next]. difflab builds the second from its
        two stream draws (sub 0 over [sigma, sigma_s], sub 1 over the rest); the same here."""
        i = self.step_of(sigma)
        w_first, w_rest = self.table[i, 0], self.table[i, 1]
        if not math.isclose(float(sigma_next), float(self.sigmas[i + 1]), rel_tol=1e-4):
            return w_first
        sigma, sigma_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
        span, span_first = sigma - sigma_next, sigma - math.sqrt(sigma * sigma_next)  # r = 1/2: s is the midpoint
        return (w_first * math.sqrt(span_first) + w_rest * math.sqrt(span - span_first)) / math.sqrt(span)


def run_both(name, sigmas, eta=None):
    k_name, options = VARIANTS.get(name, (name, {}))
    if eta is not None:
        options = {**options, "eta": eta}
    x = start(sigmas)
    shared = SharedNoise(sigmas, subs=2 if name == "dpmpp_sde" else 1)
    k_noise = shared.k_diffusion_bridge if name == "dpmpp_sde" else shared.k_diffusion
    k_options = dict(options, noise_sampler=k_noise) if eta is not None else options
    ours = SAMPLERS[k_name](denoiser, x, sigmas, noise=shared.difflab, **options)
    theirs = getattr(K, f"sample_{k_name}")(denoiser, x, sigmas, disable=True, **k_options)
    return ours, theirs


@pytest.mark.parametrize("kind", ["karras", "vp"])
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_equal_k_diffusion(name, kind):
    ours, theirs = run_both(name, grid(kind))
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOL)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("kind", ["karras", "vp"])
@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_equal_k_diffusion_with_shared_noise(name, kind, eta):
    ours, theirs = run_both(name, grid(kind), eta)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOL)


def test_shared_noise_matters():
    """The eta = 1 comparisons are not vacuous: different noise gives a clearly different result."""
    sigmas = grid("karras")
    x = start(sigmas)
    shared = SharedNoise(sigmas)
    ours = SAMPLERS["euler_ancestral"](denoiser, x, sigmas, noise=shared.difflab)
    shuffled = SAMPLERS["euler_ancestral"](denoiser, x, sigmas, noise=lambda like, i, sub=0: shared.table[i - 1, 0])
    deterministic = SAMPLERS["euler_ancestral"](denoiser, x, sigmas, eta=0.0)
    assert (ours - shuffled).abs().max() > 100 * TOL
    assert (ours - deterministic).abs().max() > 100 * TOL


@pytest.mark.parametrize("n", [1, 2, 7, 25])
@pytest.mark.parametrize("spacing", ["karras", "exponential"])
def test_ramps_equal_k_diffusion(spacing, n):
    schedule = difflab.NoiseSchedule.scaled_linear()
    ours = schedule.sigmas(n, spacing)
    make = K.get_sigmas_karras if spacing == "karras" else K.get_sigmas_exponential
    theirs = make(n, schedule.sigma_min, schedule.sigma_max)
    torch.testing.assert_close(ours.float(), theirs, rtol=1e-5, atol=0)


@pytest.mark.parametrize("spacing", ["karras", "exponential"])
@pytest.mark.parametrize("schedule", [difflab.NoiseSchedule.flow(3.0),
                                      difflab.NoiseSchedule.scaled_linear(rescale_zero_terminal_snr=True)],
                         ids=["flow", "zero_snr"])
def test_ramps_after_a_pure_noise_start_equal_k_diffusion(schedule, spacing):
    """With sigma_max = inf the grid is inf, then the ramp over n - 1 levels from the largest finite
    training sigma (k-diffusion's constructor with that sigma_max)."""
    n = 10
    ours = schedule.sigmas(n, spacing)
    assert math.isinf(ours[0])
    largest = ours[1].item()
    make = K.get_sigmas_karras if spacing == "karras" else K.get_sigmas_exponential
    torch.testing.assert_close(ours[1:].float(), make(n - 1, schedule.sigma_min, largest), rtol=1e-5, atol=0)
