"""Guidance and edit wrappers around a denoiser: classifier-free guidance (CFG and its variants) and
inpainting.

Both keep the denoiser contract ``denoiser(x, sigma, **cond) -> x0``, so every sampler works with
them unchanged.
"""

from __future__ import annotations

import math

import torch

from difflab import settings
from difflab.denoisers import append_dims, batch_sigma


class CFG:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6) in x0 space, one batched forward.

    ``cfg(x, sigma, cond={...}, uncond={...})``: ``cond``/``uncond`` are the model's keyword
    arguments for the prompt and for the negative / empty prompt. Guided x0 is
    ``x0_u + scale * (x0_c - x0_u)``, which equals guiding eps or v (both are affine in x0 at a fixed
    x and sigma). ``rescale`` is Lin et al. (2023), Sec. 3.4, eqs. 15-16, applied to the guided eps
    with the conditional eps' standard deviation per sample, as diffusers does for eps models.
    """

    def __init__(self, denoiser, scale: float = 7.5, rescale: float = 0.0):
        if not (isinstance(scale, (int, float)) and math.isfinite(scale)):
            raise ValueError(f"guidance scale must be a finite number, got {scale!r}")
        if not (isinstance(rescale, (int, float)) and 0.0 <= rescale <= 1.0):
            raise ValueError(f"guidance rescale must be in [0, 1], got {rescale!r}")
        self.denoiser, self.scale, self.rescale = denoiser, float(scale), float(rescale)

    def __call__(self, x: torch.Tensor, sigma, cond: dict | None = None, uncond: dict | None = None):
        cond = cond or {}
        if uncond is None or self.scale == 1.0:
            return self.denoiser(x, sigma, **cond)
        both = self.denoiser(torch.cat([x, x]), sigma if isinstance(sigma, (int, float)) else
                             torch.cat([batch_sigma(sigma, x)] * 2), **merge_batches(cond, uncond))
        sigma = batch_sigma(sigma, x)
        x0_cond, x0_uncond = both.chunk(2)
        x0 = self.combine(x, sigma, x0_cond, x0_uncond)
        return self._rescaled(x, sigma, x0, x0_cond) if self.rescale > 0 else x0

    def combine(self, x, sigma, x0_cond, x0_uncond):
        """The guided x0 from the two predictions (plain CFG; the variants below override this)."""
        return x0_uncond + self.scale * (x0_cond - x0_uncond)

    def _rescaled(self, x, sigma, x0, x0_cond):
        finite = torch.isfinite(sigma) & (sigma > 0)
        s = append_dims(torch.where(finite, sigma, torch.ones_like(sigma)), x.ndim).to(x)
        eps, eps_cond = (x - x0) / s, (x - x0_cond) / s
        dims = tuple(range(1, x.ndim))
        ratio = eps_cond.std(dim=dims, keepdim=True) / eps.std(dim=dims, keepdim=True).clamp_min(1e-12)
        eps = self.rescale * eps * ratio + (1 - self.rescale) * eps
        return torch.where(append_dims(finite, x.ndim).to(x.device), x - s * eps, x0)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product, shaped to broadcast against a batch: [B, 1, 1, ...]."""
    return (a * b).flatten(1).sum(1).view(-1, *[1] * (a.ndim - 1))


class APG(CFG):
    """Adaptive projected guidance (Sadat, Hilliges & Weber 2024, "Eliminating oversaturation and
    artifacts of high guidance scales in diffusion models", Sec. 4, Algorithm 1), in x0 space.

    The CFG update ``delta = x0_c - x0_u`` is averaged with negative momentum over the run
    (``delta_bar = delta + momentum * delta_bar_prev``), clipped to norm ``norm_threshold`` per sample,
    and split into its part parallel to ``x0_c`` (which mostly raises saturation) and the rest; the
    parallel part is kept with weight ``eta``: ``x0 = x0_c + (scale - 1) (delta_perp + eta delta_par)``.
    Stateful across one sampling run (a new instance per run); every evaluation updates the momentum.
    """

    def __init__(self, denoiser, scale: float = 7.5, rescale: float = 0.0, eta: float = 0.0,
                 momentum: float = -0.5, norm_threshold: float | None = None):
        super().__init__(denoiser, scale, rescale)
        self.eta, self.momentum, self.norm_threshold, self._average = float(eta), float(momentum), norm_threshold, None

    def combine(self, x, sigma, x0_cond, x0_uncond):
        delta = x0_cond - x0_uncond
        self._average = delta if self._average is None else delta + self.momentum * self._average
        delta = self._average
        if self.norm_threshold is not None:
            norm = _dot(delta, delta).sqrt()
            delta = delta * torch.clamp(self.norm_threshold / norm.clamp_min(1e-12), max=1.0)
        parallel = _dot(delta, x0_cond) / _dot(x0_cond, x0_cond).clamp_min(1e-12) * x0_cond
        return x0_cond + (self.scale - 1) * (delta - parallel + self.eta * parallel)


class CFGZeroStar(CFG):
    """CFG-Zero* (Fan et al. 2025, "CFG-Zero*: improved classifier-free guidance for flow matching
    models", eq. 8): the unconditional prediction is first scaled by the per-sample least-squares
    factor ``s* = <d_c, d_u> / |d_u|^2`` that best matches it to the conditional one, then guided:
    ``d = s* d_u + scale (d_c - s* d_u)``. ``d = (x - x0) / sigma`` is the velocity of difflab's
    sampling ODE (dx/dsigma), the quantity the paper's flow velocity is for a flow model. Where sigma is
    infinite (a pure-noise start) the velocity is undefined and plain CFG in x0 is used. The paper's
    "zero-init" (skipping the first steps) is not applied.
    """

    def combine(self, x, sigma, x0_cond, x0_uncond):
        finite = append_dims(torch.isfinite(sigma) & (sigma > 0), x.ndim).to(x.device)
        s = append_dims(torch.where(torch.isfinite(sigma) & (sigma > 0), sigma, torch.ones_like(sigma)), x.ndim).to(x)
        d_c, d_u = (x - x0_cond) / s, (x - x0_uncond) / s
        s_star = _dot(d_c, d_u) / _dot(d_u, d_u).clamp_min(1e-12)
        d = s_star * d_u + self.scale * (d_c - s_star * d_u)
        return torch.where(finite, x - s * d, super().combine(x, sigma, x0_cond, x0_uncond))


class CFGPlusPlus(CFG):
    """CFG++ (Chung et al. 2024, "CFG++: manifold-constrained classifier free guidance for diffusion
    models", Algorithm 1): a DDIM step whose clean estimate is guided with a scale ``lambda`` in [0, 1],
    ``x0_g = x0_u + lambda (x0_c - x0_u)``, and whose renoising uses the *unconditional* noise,
    ``x_next = x0_g + sigma_next * eps_u`` in VE coordinates (``eps_u = (x - x0_u) / sigma``), where CFG
    renoises with the guided noise and leaves the data manifold at high scales.

    The denoiser contract returns one x0 and the sampler renoises with ``(x - x0) / sigma``, so the
    wrapper returns the x0 that makes the sampler's own step land on the CFG++ point:
    ``x0' = (x0_g - r x0_u) / (1 - r)`` with ``r = sigma_next / sigma`` (then ``x0' + r (x - x0') =
    x0_g + r (x - x0_u)``). That needs the next noise level, so it is given the sampler's grid and works
    for the samplers whose step goes from one grid point to the next through x0 alone: Euler and
    deterministic DDIM (``settings.CFG_PP_SAMPLERS``). At a pure-noise start (r = 0) and at the last step
    (sigma_next = 0) it is x0_g. ``lambda = 1`` still differs from no guidance (it renoises with eps_u).
    """

    def __init__(self, denoiser, scale: float = 0.6, rescale: float = 0.0, sigmas=None):
        super().__init__(denoiser, scale, rescale)
        settings.validate_guidance_pairing("cfg_pp", settings.CFG_PP_SAMPLERS[0], scale)   # lambda in [0, 1]
        if rescale:
            raise ValueError("guidance_rescale does not apply to cfg_pp (it renoises with the unconditional noise)")
        if sigmas is None:
            raise ValueError("cfg_pp needs the sampler's sigma grid")
        self.grid = [float(s) for s in sigmas]

    def __call__(self, x: torch.Tensor, sigma, cond: dict | None = None, uncond: dict | None = None):
        if uncond is None:
            raise ValueError("cfg_pp needs uncond: the conditioning of the negative or empty prompt")
        sigmas = batch_sigma(sigma, x)
        both = self.denoiser(torch.cat([x, x]), torch.cat([sigmas] * 2), **merge_batches(cond or {}, uncond))
        x0_cond, x0_uncond = both.chunk(2)
        return self.combine(x, sigmas, x0_cond, x0_uncond)

    def combine(self, x, sigma, x0_cond, x0_uncond):
        r = torch.tensor([self._ratio(float(s)) for s in sigma], dtype=torch.float64)
        r = append_dims(r, x.ndim).to(device=x.device, dtype=x.dtype)
        guided = x0_uncond + self.scale * (x0_cond - x0_uncond)
        return (guided - r * x0_uncond) / (1 - r)

    def _ratio(self, sigma: float) -> float:
        """sigma_next / sigma for a sigma on the grid (0 at a pure-noise start)."""
        for here, after in zip(self.grid, self.grid[1:]):
            if here == sigma or (math.isfinite(here) and math.isclose(here, sigma, rel_tol=1e-9)):
                return 0.0 if math.isinf(here) else after / here
        raise RuntimeError(f"cfg_pp was evaluated at sigma {sigma:g}, which is not a point of its grid: it "
                           f"works with the samplers {', '.join(settings.CFG_PP_SAMPLERS)} only")


GUIDANCE_METHODS = dict(zip(settings.GUIDANCE_METHODS, (CFG, APG, CFGZeroStar, CFGPlusPlus)))  # names: settings


def merge_batches(cond: dict, uncond: dict) -> dict:
    """Stack two keyword sets along the batch. Tensors whose second dim differs (token sequences
    of different length) are zero-padded; boolean masks are padded with False."""
    if set(cond) != set(uncond):
        raise ValueError(f"cond and uncond need the same keys, got {sorted(cond)} and {sorted(uncond)}")
    merged = {}
    for key, a in cond.items():
        b = uncond[key]
        if not isinstance(a, torch.Tensor):
            if a != b:
                raise ValueError(f"non-tensor argument {key!r} differs between cond and uncond")
            merged[key] = a
            continue
        if a.ndim >= 2 and a.shape[1] != b.shape[1]:
            length = max(a.shape[1], b.shape[1])
            a, b = _pad_dim1(a, length), _pad_dim1(b, length)
        merged[key] = torch.cat([a, b])
    return merged


def _pad_dim1(v: torch.Tensor, length: int) -> torch.Tensor:
    pad = v.new_zeros((v.shape[0], length - v.shape[1]) + tuple(v.shape[2:]))
    return torch.cat([v, pad], dim=1)


class Inpaint:
    """Keep a known image outside a mask while the sampler fills the inside (white = regenerate).

    Before each evaluation the known region of x is replaced by the known image noised to the
    current level with the sample's own initial noise, x0 + sigma * z (RePaint's known-region step,
    Lugmayr et al. 2022, eq. 8, without resampling); the denoiser's x0 there is the known image. For
    the deterministic samplers the known region then stays exactly on its noising path.
    """

    def __init__(self, denoiser, image: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor):
        self.denoiser, self.image, self.mask, self.noise = denoiser, image, mask, noise

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        sigma = batch_sigma(sigma, x)
        at_infinity = append_dims(torch.isinf(sigma), x.ndim).to(x.device)
        level = append_dims(torch.where(torch.isinf(sigma), torch.zeros_like(sigma), sigma), x.ndim).to(x)
        known = torch.where(at_infinity, self.noise, self.image + level * self.noise)
        x = self.mask * x + (1 - self.mask) * known
        return self.mask * self.denoiser(x, sigma, **cond) + (1 - self.mask) * self.image
