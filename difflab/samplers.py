"""Samplers: one stateless function each over a denoiser and a descending sigma grid ending in 0.

Every sampler is called as k-diffusion's are::

    x0 = SAMPLERS[name](denoiser, x, sigmas, extra_args=None, callback=None, noise=None, **options)

``denoiser(x, sigma, **extra_args) -> x0`` works in VE coordinates (``difflab.denoisers``),
``x = noise * sigmas[0]``, and the result is x at sigma = 0, the sample. ``noise(like, step, sub)``
gives the fresh Gaussian noise of stochastic steps (``difflab.NoiseStreams`` for seeded,
batch-invariant runs; torch's global generator when omitted). Multistep history is a local variable.

Pure-noise start: if ``sigmas[0]`` is inf, ``x`` is the unit noise itself (VE x is infinite there)
and the first step is taken in closed form, the limit sigma_from -> inf of the ancestral step
shared by every sampler: ``x = x0 + sigma_down * z + sigma_up * noise`` (DDIM / DDPM from alpha = 0;
Euler of a flow model from t = 1). The sampler then continues from ``sigmas[1]``.

Notation: ``d = (x - x0) / sigma`` is the PF-ODE derivative dx/dsigma (Karras et al. 2022, eq. 4),
``lam = -log sigma`` the log-SNR/2 of DPM-Solver (Lu et al. 2022), ``h`` a step in ``lam``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from difflab.noise import global_noise


@dataclass(frozen=True)
class SamplerInfo:
    """What callers need to know of a sampler: ``evals(n)`` is its model evaluations for n steps."""

    name: str
    stochastic: bool
    order: int
    evals_per_step: int = 1
    extra_first: int = 0

    def evals(self, steps: int) -> int:
        """Model evaluations (NFE) of ``steps`` steps; the final step to sigma = 0 is one evaluation."""
        return self.evals_per_step * steps - (self.evals_per_step - 1) + self.extra_first


SAMPLERS: dict = {}
SAMPLER_INFO: dict[str, SamplerInfo] = {}


def register(name, *, stochastic=False, order=1, evals_per_step=1, extra_first=0):
    def wrap(fn):
        SAMPLERS[name] = fn
        SAMPLER_INFO[name] = SamplerInfo(name, stochastic, order, evals_per_step, extra_first)
        return fn
    return wrap


# ----- shared formulas -------------------------------------------------------------------------
def to_d(x, sigma, x0):
    """PF-ODE derivative dx/dsigma = (x - x0) / sigma (Karras et al. 2022, eq. 4 with s = 1)."""
    return (x - x0) / sigma


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step: deterministic to sigma_down, then fresh noise of
    std sigma_up, with sigma_down^2 + sigma_up^2 = sigma_to^2. eta = 1 is DDPM's posterior
    (Ho et al. 2020, eq. 7); eta = 0 is DDIM (Song et al. 2021, eq. 16 in VE form)."""
    if not eta or sigma_to == 0:
        return sigma_to, 0.0
    ratio = sigma_to / sigma_from  # 0 at a pure-noise start
    sigma_up = min(sigma_to, eta * sigma_to * math.sqrt(max(1 - ratio**2, 0.0)))
    return math.sqrt(sigma_to**2 - sigma_up**2), sigma_up


class _Run:
    """A sampler's view of one call: the bound denoiser, grid, noise and callback."""

    def __init__(self, denoiser, x, sigmas, extra_args, callback, noise):
        self.model = denoiser
        self.extra = extra_args or {}
        self.callback, self.noise_fn = callback, noise or global_noise
        self.sigmas = [float(s) for s in sigmas]
        self.offset = 0
        _check_grid(self.sigmas)

    def __call__(self, x, sigma: float):
        return self.model(x, sigma, **self.extra)

    def noise(self, like, i: int, sub: int = 0):
        return self.noise_fn(like, i + self.offset, sub)

    def report(self, i, x, sigma, x0):
        if self.callback is not None:
            self.callback({"i": i + self.offset, "x": x, "sigma": sigma, "denoised": x0})

    def start(self, x, eta: float = 0.0, s_noise: float = 1.0):
        """Leave a pure-noise start (sigmas[0] = inf) exactly; returns x and the remaining grid."""
        if not math.isinf(self.sigmas[0]):
            return x, self.sigmas
        x0 = self(x, math.inf)
        sigma_down, sigma_up = ancestral_step(math.inf, self.sigmas[1], eta)
        self.report(0, x, math.inf, x0)
        x = x0 + sigma_down * x
        if sigma_up:
            x = x + self.noise(x, 0) * s_noise * sigma_up
        self.offset = 1
        return x, self.sigmas[1:]


def _check_grid(sigmas: list[float]) -> None:
    if len(sigmas) < 2 or sigmas[-1] != 0:
        raise ValueError("sigmas must hold at least two descending values and end in 0")
    if any(b >= a for a, b in zip(sigmas, sigmas[1:])) or any(math.isnan(s) or s < 0 for s in sigmas):
        raise ValueError("sigmas must be strictly descending and non-negative")
    if any(math.isinf(s) for s in sigmas[1:]):
        raise ValueError("only sigmas[0] may be inf (a pure-noise start)")


def _ancestral(run, x, sigmas, eta, s_noise):
    """Euler ancestral steps (k-diffusion; Ho et al. 2020 / Song et al. 2021 in VE form)."""
    for i in range(len(sigmas) - 1):
        x0 = run(x, sigmas[i])
        run.report(i, x, sigmas[i], x0)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x0 + sigma_down * to_d(x, sigmas[i], x0)
        if sigma_up:
            x = x + run.noise(x, i) * s_noise * sigma_up
    return x


# ----- first-order and ancestral ---------------------------------------------------------------
@register("euler", order=1)
def euler(denoiser, x, sigmas, extra_args=None, callback=None, noise=None):
    """Euler steps of the PF-ODE (Karras et al. 2022, Algorithm 2 without churn)."""
    run = _Run(denoiser, x, sigmas, extra_args, callback, noise)
    x, sigmas = run.start(x)
    for i in range(len(sigmas) - 1):
        x0 = run(x, sigmas[i])
        run.report(i, x, sigmas[i], x0)
        x = x + to_d(x, sigmas[i], x0) * (sigmas[i + 1] - sigmas[i])
    return x


@register("euler_ancestral", stochastic=True, order=1)
def euler_ancestral(denoiser, x, sigmas, extra_args=None, callback=None, noise=None, eta=1.0, s_noise=1.0):
    """Ancestral Euler: an Euler step to sigma_down, then noise to sigma_next (k-diffusion)."""
    run = _Run(denoiser, x, sigmas, extra_args, callback, noise)
    x, sigmas = run.start(x, eta, s_noise)
    return _ancestral(run, x, sigmas, eta, s_noise)


@register("ddim", order=1)
def ddim(denoiser, x, sigmas, extra_args=None, callback=None, noise=None, eta=0.0):
    """DDIM (Song et al. 2021, eq. 12). In VE coordinates its eta-step is exactly the ancestral
    step: x0 + sigma_down * eps + sigma_up * z with sigma_up = eta * sigma_t-1 sqrt(1 - sigma_t-1^2 / sigma_t^2)
    (eq. 16 divided by alpha_t-1). eta = 0 is deterministic and equals Euler."""
    run = _Run(denoiser, x, sigmas, extra_args, callback, noise)
    x, sigmas = run.start(x, eta)
    return _ancestral(run, x, sigmas, eta, 1.0)


@register("ddpm", stochastic=True, order=1)
def ddpm(denoiser, x, sigmas, extra_args=None, callback=None, noise=None):
    """Ancestral sampling from DDPM's posterior q(x_t-1 | x_t, x0) (Ho et al. 2020, eqs. 6-7) with
    variance beta-tilde: DDIM with eta = 1 (Song et al. 2021, Sec. 4.1), on any grid."""
    run = _Run(denoiser, x, sigmas, extra_args, callback, noise)
    x, sigmas = run.start(x, 1.0)
    return _ancestral(run, x, sigmas, 1.0, 1.0)


@register("lcm", stochastic=True, order=1)
def lcm(denoiser, x, sigmas, extra_args=None, callback=None, noise=None):
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1; LCM, Luo et al. 2023): predict
    x0, then re-noise it to the next level with fresh noise. A distilled model's boundary
    conditions (c_skip, c_out) belong to its denoiser, not here."""
    run = _Run(denoiser, x, sigmas, extra_args, callback, noise)
    x, sigmas = run.start(x, 1.0)
    for i in range(len(sigmas) - 1):
        x = x0 = run(x, sigmas[i])
        run.report(i, x, sigmas[i], x0)
        if sigmas[i + 1] > 0:
            x = x0 + run.noise(x, i) * sigmas[i + 1]
    return x


# ----- second-order single-step ---------------------------------------------------------------
@register("heun", order=2, evals_per_step=2)
def heun(denoiser, x, sigmas, extra_args=None, callback=None, noise=None):
    """Heun's method, Euler on the last step to sigma = 0 (Karras et al. 2022, Algorithm 1)."""
    run = _Run(denoiser, x, sigmas, extra_args, callback, noise)
    x, sigmas = run.start(x)
    for i in range(len(sigmas) - 1):
        x0 = run(x, sigmas[i])
        run.report(i, x, sigmas[i], x0)
        d = to_d(x, sigmas[i], x0)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
            continue
        x_next = x + d * dt
        d_next = to_d(x_next, sigmas[i + 1], run(x_next, sigmas[i + 1]))
        x = x + (d + d_next) / 2 * dt
    return x


def _dpm2_step(run, x, x0, sigma, sigma_to):
    """Midpoint in log sigma (DPM-Solver-2 in the form of Karras et al. 2022, Sec. 4)."""
    d = to_d(x, sigma, x0)
    if sigma_to == 0:
        return x + d * (sigma_to - sigma)
    sigma_mid = math.exp((math.log(sigma) + math.log(sigma_to)) / 2)
    x_mid = x + d * (sigma_mid - sigma)
    return x + to_d(x_mid, sigma_mid, run(x_mid, sigma_mid)) * (sigma_to - sigma)


@register("dpm_2", order=2, evals_per_step=2)
def dpm_2(denoiser, x, sigmas, extra_args=None, callback=None, noise=None):
    """DPM-Solver-2 with the midpoint in log sigma (Lu et al. 2022; Karras et al. 2022, Sec. 4)."""
    return dpm_2_ancestral(denoiser, x, sigmas, extra_args, callback, noise, eta=0.0)  # sigma_down = sigma_next


@register("dpm_2_ancestral", stochastic=True, order=2, evals_per_step=2)
def dpm_2_ancestral(denoiser, x, sigmas, extra_args=None, callback=None, noise=None, eta=1.0, s_noise=1.0):
    """DPM-Solver-2 to sigma_down, then noise to the next level (k-diffusion's ancestral form)."""
    run = _Run(denoiser, x, sigmas, extra_args, callback, noise)
    x, sigmas = run.start(x, eta, s_noise)
    for i in range(len(sigmas) - 1):
        x0 = run(x, sigmas[i])
        run.report(i, x, sigmas[i], x0)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = _dpm2_step(run, x, x0, sigmas[i], sigma_down)
        if sigma_up:
            x = x + run.noise(x, i) * s_noise * sigma_up
    return x


@register("dpmpp_2s_ancestral", stochastic=True, order=2, evals_per_step=2)
def dpmpp_2s_ancestral(denoiser, x, sigmas, extra_args=None, callback=None, noise=None, eta=1.0, s_noise=1.0):
    """DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1, r = 1/2) to sigma_down, then ancestral noise."""
    run = _Run(denoiser, x, sigmas, extra_args, callback, noise)
    x, sigmas = run.start(x, eta, s_noise)
    for i in range(len(sigmas) - 1):
        x0 = run(x, sigmas[i])
        run.report(i, x, sigmas[i], x0)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if sigma_down == 0:
            x = x0
        else:
            h = math.log(sigmas[i] / sigma_down)
            sigma_mid = sigmas[i] * math.exp(-h / 2)
            x_mid = (sigma_mid / sigmas[i]) * x - math.expm1(-h / 2) * x0
            x = (sigma_down / sigmas[i]) * x - math.expm1(-h) * run(x_mid, sigma_mid)
        if sigma_up:
            x = x + run.noise(x, i) * s_noise * sigma_up
    return x


@register("dpmpp_sde", stochastic=True, order=2, evals_per_step=2)
def dpmpp_sde(denoiser, x, sigmas, extra_args=None, callback=None, noise=None, eta=1.0, s_noise=1.0, r=0.5):
    """DPM-Solver++ SDE, two stages per step (k-diffusion's dpmpp_sde after Lu et al. 2022b).

    The two noises of a step are increments of one Brownian path over sigma: the stage-1 draw covers
    [sigma_i, sigma_s], the stage-2 draw [sigma_i, sigma_i+1] and contains it (a Brownian bridge
    made of two independent stream draws)."""
    run = _Run(denoiser, x, sigmas, extra_args, callback, noise)
    x, sigmas = run.start(x, eta, s_noise)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = run(x, sigma)
        run.report(i, x, sigma, x0)
        if sigma_next == 0:
            x = x0
            continue
        h = math.log(sigma / sigma_next)
        sigma_s = sigma * math.exp(-r * h)
        w_first, w_rest = run.noise(x, i, 0), run.noise(x, i, 1)
        span, span_first = sigma - sigma_next, sigma - sigma_s
        noise_first = w_first
        noise_full = (w_first * math.sqrt(span_first) + w_rest * math.sqrt(span - span_first)) / math.sqrt(span)
        # stage 1: to the intermediate level s
        down, up = ancestral_step(sigma, sigma_s, eta)
        x_s = (down / sigma) * x - math.expm1(math.log(sigma / down) * -1) * x0
        x_s = x_s + noise_first * s_noise * up
        x0_s = run(x_s, sigma_s)
        # stage 2: to sigma_next with the blended data prediction
        down, up = ancestral_step(sigma, sigma_next, eta)
        x0_d = (1 - 1 / (2 * r)) * x0 + 1 / (2 * r) * x0_s
        x = (down / sigma) * x - math.expm1(-math.log(sigma / down)) * x0_d
        x = x + noise_full * s_noise * up
    return x


from difflab import multistep as _multistep  # noqa: E402,F401  (registers the multistep samplers)

SAMPLER_NAMES = ("ddpm", "ddim", "plms", "euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms",
                 "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "unipc", "deis", "lcm")
SAMPLERS = {name: SAMPLERS[name] for name in SAMPLER_NAMES}
