"""The forward process: noise schedules, noise levels and sigma grids.

Notation (DDPM, Ho et al. 2020; VE form from Karras et al. 2022, "EDM", eq. 2):

    native coordinates   x_t = alpha_t * x0 + sigma_t * eps            (what a model sees)
    VE coordinates       x   = x_t / alpha_t = x0 + sigma * eps,  sigma = sigma_t / alpha_t

``sigma`` without a qualifier is always the VE noise level: every sampler works with it. Discrete
VP schedules (DDPM linear, Stable Diffusion's scaled-linear, Nichol & Dhariwal's cosine) keep
``alphas_cumprod`` (the alpha-bar of DDPM, alpha_t**2 here) in float64, one per training step.
Flow matching / rectified flow (Liu et al. 2022; Esser et al. 2024, "SD3") is continuous:
x_t = (1 - t) x0 + t eps, so alpha = 1 - t, sigma_t = t and sigma = t / (1 - t).

Model time runs over [0, num_train_timesteps) for every schedule; for flow it is 1000 * t, as SD3
and diffusers use. A pure-noise endpoint (flow at t = 1; zero terminal SNR) has sigma = inf and is
kept exactly: samplers step away from it in closed form (see ``difflab.samplers``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from difflab.parameterization import get_parameterization
from difflab.settings import SPACINGS

KINDS = ("linear", "scaled_linear", "cosine", "flow")
KARRAS_RHO = 7.0


@dataclass(frozen=True)
class NoiseSchedule:
    """A forward process. Build one with the class methods, e.g. ``NoiseSchedule.scaled_linear()``.

    Default sigma spacing (``sigmas(n)`` without ``spacing``): ``"karras"`` for discrete schedules
    (measured best by benchmarks/samplers.py: it ends at sigma_min rather than jumping to 0 from a
    large sigma as trailing does; with zero terminal SNR it starts at pure noise), ``"linspace"`` for
    flow (exactly diffusers' FlowMatchEulerDiscreteScheduler grid).
    """

    kind: str = "scaled_linear"
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    rescale_zero_terminal_snr: bool = False
    shift: float = 1.0
    steps_offset: int = 0           # added to 'leading' timesteps (diffusers' scheduler config; SD 1.x/2.x: 1)
    alphas_cumprod: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _log_sigmas: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"schedule kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.num_train_timesteps, int) or self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an integer >= 2, got {self.num_train_timesteps!r}")
        if isinstance(self.steps_offset, bool) or not isinstance(self.steps_offset, int) or self.steps_offset < 0:
            raise ValueError(f"steps_offset must be an integer >= 0, got {self.steps_offset!r}")
        if not (math.isfinite(self.shift) and self.shift > 0):
            raise ValueError(f"shift must be a positive finite number, got {self.shift!r}")
        if self.kind == "flow":
            if self.rescale_zero_terminal_snr:
                raise ValueError("rescale_zero_terminal_snr applies to discrete schedules; flow already ends at pure noise")
            return
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")
        alphas_cumprod = torch.cumprod(1.0 - _betas(self), dim=0)
        if self.rescale_zero_terminal_snr:
            alphas_cumprod = _rescale_zero_terminal_snr(alphas_cumprod)
        object.__setattr__(self, "alphas_cumprod", alphas_cumprod)
        object.__setattr__(self, "_log_sigmas", 0.5 * torch.log((1 - alphas_cumprod) / alphas_cumprod))

    # ----- constructors ----------------------------------------------------------------------
    @classmethod
    def linear(cls, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, rescale_zero_terminal_snr=False):
        """DDPM's linear betas (Ho et al. 2020, Sec. 4)."""
        return cls("linear", num_train_timesteps, beta_start, beta_end, rescale_zero_terminal_snr)

    @classmethod
    def scaled_linear(cls, num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                      rescale_zero_terminal_snr=False):
        """Latent diffusion / Stable Diffusion: betas linear in sqrt(beta)."""
        return cls("scaled_linear", num_train_timesteps, beta_start, beta_end, rescale_zero_terminal_snr)

    @classmethod
    def cosine(cls, num_train_timesteps=1000, rescale_zero_terminal_snr=False):
        """Nichol & Dhariwal (2021), eq. 17, betas capped at 0.999 (diffusers' squaredcos_cap_v2)."""
        return cls("cosine", num_train_timesteps, rescale_zero_terminal_snr=rescale_zero_terminal_snr)

    @classmethod
    def flow(cls, shift=1.0, num_train_timesteps=1000):
        """Rectified flow x_t = (1 - t) x0 + t eps; ``shift`` warps the sampling grid (SD3, eq. 23)."""
        return cls("flow", num_train_timesteps, shift=float(shift))

    def to_config(self) -> dict:
        config = asdict(self)
        config.pop("alphas_cumprod"), config.pop("_log_sigmas")
        return config

    @classmethod
    def from_config(cls, config: dict) -> "NoiseSchedule":
        allowed = {"kind", "num_train_timesteps", "beta_start", "beta_end", "rescale_zero_terminal_snr", "shift",
                   "steps_offset"}
        unknown = set(config) - allowed
        if unknown:
            raise ValueError(f"unknown schedule config fields {sorted(unknown)}; allowed: {sorted(allowed)}")
        return cls(**config)

    @property
    def is_flow(self) -> bool:
        return self.kind == "flow"

    @property
    def default_spacing(self) -> str:
        return "linspace" if self.is_flow else "karras"

    @property
    def sigma_min(self) -> float:
        """Smallest positive sigma of the training range."""
        if self.is_flow:
            t = 1.0 / self.num_train_timesteps
            return t / (1 - t)
        return float(self._log_sigmas[0].exp())

    @property
    def sigma_max(self) -> float:
        """Largest sigma of the training range (inf for pure-noise endpoints)."""
        return math.inf if self.is_flow else float(self._log_sigmas[-1].exp())

    # ----- noise levels ----------------------------------------------------------------------
    def sigma(self, t) -> torch.Tensor:
        """VE sigma at (fractional) model time t, log-sigma linear in t between training steps."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.is_flow:
            u = t / self.num_train_timesteps
            return u / (1 - u)
        last = self.num_train_timesteps - 1
        t = t.clamp(0, last)
        low = t.floor().long().clamp(max=last - 1)
        frac = t - low
        log_sigma = torch.lerp(self._log_sigmas[low], self._log_sigmas[low + 1], frac)
        if self.rescale_zero_terminal_snr:
            # log sigma is infinite at the last step: interpolate alpha (finite, -> 0) there instead.
            alpha = torch.lerp(self.alphas_cumprod[-2].sqrt(), torch.zeros((), dtype=torch.float64), frac)
            in_last = low == last - 1
            log_sigma = torch.where(in_last, 0.5 * torch.log((1 - alpha**2) / alpha**2), log_sigma)
        return log_sigma.exp()

    def t(self, sigma) -> torch.Tensor:
        """Model time of a VE sigma: the inverse of ``sigma(t)``."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        if self.is_flow:
            return self.num_train_timesteps * _flow_t(sigma)
        last = self.num_train_timesteps - 1
        log_sigmas = self._log_sigmas
        finite = log_sigmas[:-1] if self.rescale_zero_terminal_snr else log_sigmas
        log_sigma = sigma.log().clamp(min=float(log_sigmas[0]))
        high = torch.searchsorted(finite, log_sigma.clamp(max=float(finite[-1])).reshape(-1)).reshape(sigma.shape)
        high = high.clamp(1, len(finite) - 1)
        low = high - 1
        frac = (log_sigma - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])
        t = (low + frac.clamp(0, 1)).to(torch.float64)
        if self.rescale_zero_terminal_snr:
            alpha_prev = self.alphas_cumprod[-2].sqrt()
            alpha = 1 / torch.sqrt(1 + sigma**2)
            beyond = sigma > finite[-1].exp()
            t = torch.where(beyond, (last - 1) + (1 - alpha / alpha_prev), t)
        else:
            t = torch.where(log_sigma > finite[-1], torch.full_like(t, last), t)
        return t

    def alpha_sigma(self, sigma) -> tuple[torch.Tensor, torch.Tensor]:
        """Native (alpha_t, sigma_t) of a VE sigma; exact at sigma = 0 and sigma = inf."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        if self.is_flow:
            alpha = 1 / (1 + sigma)
            return alpha, 1 / (1 + 1 / sigma)
        return 1 / torch.sqrt(1 + sigma**2), 1 / torch.sqrt(1 + 1 / sigma**2)

    def snr(self, t) -> torch.Tensor:
        """Signal-to-noise ratio alpha_t^2 / sigma_t^2 = 1 / sigma^2 (Kingma et al. 2021)."""
        return self.sigma(t).pow(-2)

    # ----- forward process and training targets ----------------------------------------------
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """Sample q(x_t | x0) in native coordinates: alpha_t x0 + sigma_t eps (t per sample)."""
        alpha, sigma_t = self._native(t, x0)
        return alpha * x0 + sigma_t * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t, prediction_type) -> torch.Tensor:
        """Training target of a parameterization at model time t (see ``difflab.parameterization``)."""
        return get_parameterization(prediction_type).target(x0, noise, *self.native_scales(t, x0))

    def native_scales(self, t, like: torch.Tensor):
        """(alpha_t, sigma_t) at model times t, shaped [B, 1, ...] and typed like ``like``."""
        return self._native(t, like)

    def _native(self, t, like: torch.Tensor):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        alpha, sigma_t = self.alpha_sigma(self.sigma(t))
        shape = (-1,) + (1,) * (like.ndim - 1)
        return alpha.to(like).reshape(shape), sigma_t.to(like).reshape(shape)

    # ----- sigma grids -----------------------------------------------------------------------
    def sigmas(self, n: int, spacing: str | None = None, steps_offset: int | None = None,
               start: float | None = None) -> torch.Tensor:
        """``n`` sampling steps -> ``n + 1`` descending VE sigmas (float64) ending in 0.

        leading / trailing / linspace follow diffusers' ``timestep_spacing`` (Lin et al. 2023,
        Table 2; linspace keeps fractional timesteps as diffusers' Euler schedulers do); karras is
        Karras et al. (2022) eq. 5 with rho = 7; exponential is uniform in log sigma. ``steps_offset``
        (default: the schedule's) shifts 'leading' timesteps, as diffusers' scheduler configs do.
        ``start`` (a model time; an edit's start, see ``difflab.sampling.edit_sigmas``) begins the
        grid at ``sigma(start)``: karras and exponential ramp from there to sigma_min, the timestep
        spacings lay their n-step grid onto [0, start] (model times scaled by start / first time).
        """
        if start is not None:
            return self._sigmas_from(n, spacing, float(start), steps_offset)
        steps_offset = self.steps_offset if steps_offset is None else steps_offset
        spacing = self.default_spacing if spacing is None else spacing
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"steps must be an integer >= 1, got {n!r}")
        if spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
        if spacing in ("karras", "exponential"):
            sigmas = self._ramp_sigmas(n, spacing)
        elif self.is_flow:
            sigmas = self._flow_sigmas(n, spacing)
        else:
            sigmas = self.sigma(torch.from_numpy(_discrete_timesteps(n, spacing, self.num_train_timesteps,
                                                                     steps_offset)))
        return torch.cat([sigmas.to(torch.float64), sigmas.new_zeros(1)])

    def timesteps(self, sigmas: torch.Tensor) -> torch.Tensor:
        """Model times of a sigma grid (without its final 0)."""
        return self.t(sigmas[:-1])

    def _flow_sigmas(self, n: int, spacing: str) -> torch.Tensor:
        T = self.num_train_timesteps
        shifted = lambda u: self.shift * u / (1 + (self.shift - 1) * u)  # SD3 eq. 23
        if spacing == "linspace":
            # diffusers' FlowMatchEulerDiscreteScheduler: linspace between the shifted ends of the
            # training grid, then shifted (again) — reproduced as it is, so grids match.
            u = torch.linspace(T * shifted(1.0), T * shifted(1.0 / T), n, dtype=torch.float64) / T
        elif spacing == "trailing":
            u = 1 - torch.arange(n, dtype=torch.float64) / n
        else:
            raise ValueError("flow schedules support the spacings linspace, trailing, karras and exponential, "
                             f"not {spacing!r}")
        u = shifted(u)
        return u / (1 - u)

    def _sigmas_from(self, n: int, spacing: str | None, start: float, steps_offset: int | None) -> torch.Tensor:
        full = self.sigmas(n, spacing, steps_offset)  # also checks n and spacing
        sigma_start = self.sigma(start).reshape(1)
        if n == 1 or math.isinf(sigma_start):
            return torch.cat([sigma_start, full[1:]])
        if (spacing or self.default_spacing) in ("karras", "exponential"):
            sigmas = self._ramp_sigmas(n, spacing or self.default_spacing, float(sigma_start))
        else:
            t = self.timesteps(full)
            sigmas = self.sigma(t / t[0] * start)  # t / t[0] is exactly 1 at the first level
        return torch.cat([sigmas, full[-1:]])

    def _ramp_sigmas(self, n: int, spacing: str, sigma_max: float | None = None) -> torch.Tensor:
        """Karras / exponential ramps between sigma_min and sigma_max (default: the schedule's).
        With a pure-noise endpoint the grid starts at inf and the ramp covers the remaining n - 1
        levels from the largest finite training sigma."""
        sigma_min, sigma_max = self.sigma_min, self.sigma_max if sigma_max is None else sigma_max
        start_at_infinity = math.isinf(sigma_max)
        if start_at_infinity:
            sigma_max = float(self.sigma(self.num_train_timesteps - (1 if self.is_flow else 2)))
            n -= 1
        if n == 0:
            return torch.tensor([math.inf], dtype=torch.float64)
        ramp = torch.linspace(0, 1, n, dtype=torch.float64)
        if spacing == "karras":
            lo, hi = sigma_min ** (1 / KARRAS_RHO), sigma_max ** (1 / KARRAS_RHO)
            sigmas = (hi + ramp * (lo - hi)) ** KARRAS_RHO
        else:
            sigmas = torch.exp(math.log(sigma_max) + ramp * (math.log(sigma_min) - math.log(sigma_max)))
        if start_at_infinity:
            sigmas = torch.cat([torch.tensor([math.inf], dtype=torch.float64), sigmas])
        return sigmas


def _flow_t(sigma: torch.Tensor) -> torch.Tensor:
    """Flow time t = sigma / (1 + sigma), exact at inf."""
    return 1 / (1 + 1 / sigma)


def _betas(s: NoiseSchedule) -> torch.Tensor:
    T = s.num_train_timesteps
    if s.kind == "linear":
        return torch.linspace(s.beta_start, s.beta_end, T, dtype=torch.float64)
    if s.kind == "scaled_linear":
        return torch.linspace(s.beta_start**0.5, s.beta_end**0.5, T, dtype=torch.float64) ** 2
    # cosine: alpha_bar(t) = cos^2((t/T + 0.008) / 1.008 * pi/2), betas from its ratios, cap 0.999.
    alpha_bar = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.tensor([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)],
                        dtype=torch.float64)


def _rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Lin et al. (2023), Algorithm 1: shift and scale sqrt(alpha_bar) so the last step is pure noise."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    return root**2


def _discrete_timesteps(n: int, spacing: str, T: int, steps_offset: int) -> np.ndarray:
    """Descending model timesteps of diffusers' three ``timestep_spacing`` rules."""
    if n > T:
        raise ValueError(f"steps ({n}) cannot exceed num_train_timesteps ({T}) with {spacing!r} spacing")
    if spacing == "linspace":
        return np.linspace(0, T - 1, n, dtype=np.float64)[::-1].copy()
    if spacing == "leading":
        return (np.arange(0, n) * (T // n)).round()[::-1].astype(np.float64) + steps_offset
    return np.round(np.arange(T, 0, -T / n)).astype(np.float64) - 1  # trailing
