"""Guidance and edit wrappers around a denoiser: classifier-free guidance and inpainting.

Both keep the denoiser contract ``denoiser(x, sigma, **cond) -> x0``, so every sampler works with
them unchanged.
"""

from __future__ import annotations

import math

import torch

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
        x0 = x0_uncond + self.scale * (x0_cond - x0_uncond)
        return self._rescaled(x, sigma, x0, x0_cond) if self.rescale > 0 else x0

    def _rescaled(self, x, sigma, x0, x0_cond):
        finite = torch.isfinite(sigma) & (sigma > 0)
        s = append_dims(torch.where(finite, sigma, torch.ones_like(sigma)), x.ndim).to(x)
        eps, eps_cond = (x - x0) / s, (x - x0_cond) / s
        dims = tuple(range(1, x.ndim))
        ratio = eps_cond.std(dim=dims, keepdim=True) / eps.std(dim=dims, keepdim=True).clamp_min(1e-12)
        eps = self.rescale * eps * ratio + (1 - self.rescale) * eps
        return torch.where(append_dims(finite, x.ndim).to(x.device), x - s * eps, x0)


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
