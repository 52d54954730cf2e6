"""What every sampler shares: the registry, the per-call run, and the formulas of more than one sampler.

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


def _dpmpp_step(x, x0, sigma: float, sigma_to: float, h: float):
    """First-order DPM-Solver++ update in data prediction from sigma to sigma_to = sigma e^-h
    (Lu et al. 2022b, DPM-Solver++(1), VE form): x' = (sigma_to / sigma) x - (e^-h - 1) x0."""
    return (sigma_to / sigma) * x - math.expm1(-h) * x0


def _ddim_step(run, x, x0, sigma: float, sigma_to: float):
    """x0 + sigma_to * d: DDIM's deterministic step (Song et al. 2021, eq. 12 in VE form), which is
    also the Euler step in sigma."""
    return x0 + sigma_to * to_d(x, sigma, x0)


# ----- one run of a sampler --------------------------------------------------------------------
class _Run:
    """A sampler's view of one call: the bound denoiser, grid, noise and callback."""

    def __init__(self, denoiser, x, sigmas, extra_args, callback, noise):
        self.model = denoiser
        self.extra = extra_args or {}
        self.callback, self.noise_fn = callback, noise or global_noise
        self.sigmas = [float(s) for s in sigmas]
        self.offset = 0
        _check_grid(self.sigmas)

    @classmethod
    def begin(cls, denoiser, x, sigmas, extra_args, callback, noise, eta: float = 0.0, s_noise: float = 1.0):
        """The run of one sampler call, and x and the grid left after a pure-noise start (``start``)."""
        run = cls(denoiser, x, sigmas, extra_args, callback, noise)
        x, sigmas = run.start(x, eta, s_noise)
        return run, x, sigmas

    def __call__(self, x, sigma: float):
        return self.model(x, sigma, **self.extra)

    def denoise(self, i: int, x, sigma: float):
        """The model's x0 at step i, reported to the callback."""
        x0 = self(x, sigma)
        self.report(i, x, sigma, x0)
        return x0

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
    if len(sigmas) < 2:
        raise ValueError("sigmas must hold at least two descending values (a grid ends in 0, or above it for "
                         "a teacher step)")
    if any(b >= a for a, b in zip(sigmas, sigmas[1:])) or any(math.isnan(s) or s < 0 for s in sigmas):
        raise ValueError("sigmas must be strictly descending and non-negative")
    if any(math.isinf(s) for s in sigmas[1:]):
        raise ValueError("only sigmas[0] may be inf (a pure-noise start)")


# ----- shared step loops -----------------------------------------------------------------------
def _ancestral(run, x, sigmas, eta, s_noise, step=_ddim_step):
    """Ancestral steps (k-diffusion; Ho et al. 2020 / Song et al. 2021 in VE form): a deterministic
    ``step(run, x, x0, sigma, sigma_down)`` (DDIM's by default), then fresh noise of std sigma_up."""
    for i in range(len(sigmas) - 1):
        x0 = run.denoise(i, x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = step(run, x, x0, sigmas[i], sigma_down)
        if sigma_up:
            x = x + run.noise(x, i) * s_noise * sigma_up
    return x


def _data_multistep(run, x, sigmas, step):
    """The loop of the DPM-Solver++ multistep samplers: the last step returns x0 (sigma = 0), every
    other one is ``x = step(i, x, x0, h, x0s, hs)`` with the two previous x0s and hs, newest first."""
    x0s, hs = [], []
    for i in range(len(sigmas) - 1):
        x0 = run.denoise(i, x, sigmas[i])
        if sigmas[i + 1] == 0:
            return x0
        h = math.log(sigmas[i] / sigmas[i + 1])
        x = step(i, x, x0, h, x0s, hs)
        x0s, hs = [x0] + x0s[:1], [h] + hs[:1]
    return x
