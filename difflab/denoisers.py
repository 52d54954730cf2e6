"""Denoisers: any native model + schedule + prediction type -> one sigma-space contract.

``denoiser(x, sigma, **cond) -> x0`` with ``x = x0 + sigma * eps`` in VE coordinates (k-diffusion's
contract; Karras et al. 2022, Sec. 2). Samplers see only this and never branch on prediction type.

Notation: VE ``x``, ``sigma``; native ``x_t = alpha * x``, ``sigma_t = alpha * sigma`` (see
``difflab.schedules``). The model output is turned into x0 by one affine map per prediction type,
valid for any (alpha, sigma_t), VP or flow:

    epsilon       x0 = (x_t - sigma_t eps) / alpha
    v_prediction  x0 = (alpha x_t - sigma_t v) / (alpha^2 + sigma_t^2)      (Salimans & Ho 2022)
    sample        x0 = out
    flow          x0 = (x_t - sigma_t u) / (alpha + sigma_t),  u = eps - x0  (Liu et al. 2022)

At the pure-noise endpoint (sigma = inf: alpha = 0, sigma_t = 1) VE coordinates are infinite, so
by convention a sampler passes the unit noise z = x_t itself there. v, sample and flow give x0
exactly from it (x0 = -v, out, z - u); epsilon cannot (x0 is 0/0) and is refused.
"""

from __future__ import annotations

import math

import torch

from difflab.schedules import NoiseSchedule

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Give a per-sample tensor [B] trailing singleton dims to broadcast against a [B, ...] tensor."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def batch_sigma(sigma, x: torch.Tensor) -> torch.Tensor:
    """Sigma as a float64 tensor of shape [B] (a scalar is broadcast to the batch)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64).to("cpu")
    return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma.reshape(x.shape[0])


def validate_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return prediction_type


class Denoiser:
    """Wrap a native model ``model(x_t, t, **cond) -> prediction`` into ``denoiser(x, sigma, **cond) -> x0``."""

    def __init__(self, model, schedule: NoiseSchedule, prediction_type: str = "epsilon"):
        if not callable(model):
            raise ValueError(f"model must be callable as model(x_t, t, **cond), got {type(model).__name__}")
        if not isinstance(schedule, NoiseSchedule):
            raise ValueError(f"schedule must be a difflab.NoiseSchedule, got {type(schedule).__name__}")
        self.model = model
        self.schedule = schedule
        self.prediction_type = validate_prediction_type(prediction_type)
        self._scalar_cache: dict[float, tuple[float, float, float, float]] = {}

    def __repr__(self) -> str:
        return f"Denoiser({type(self.model).__name__}, {self.schedule.kind}, {self.prediction_type})"

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        sigma = batch_sigma(sigma, x)
        at_infinity = torch.isinf(sigma)
        if self.prediction_type == "epsilon" and bool(at_infinity.any()):
            raise ValueError("an epsilon-prediction model cannot denoise pure noise (alpha = 0): use a schedule "
                             "without a pure-noise endpoint, or a v_prediction / flow / sample model")
        alpha, sigma_t = self.schedule.alpha_sigma(sigma)
        scale_in = torch.where(at_infinity, torch.ones_like(alpha), alpha)
        x_t = x * append_dims(scale_in, x.ndim).to(x)
        t = self.schedule.t(sigma).to(device=x.device, dtype=x.dtype)
        out = self.model(x_t, t, **cond)
        c_x, c_out = self.output_coefficients(alpha, sigma_t)
        return append_dims(c_x, x.ndim).to(x) * x_t + append_dims(c_out, x.ndim).to(x) * out

    def _scalar_coefficients(self, sigma: float):
        if sigma not in self._scalar_cache:
            if math.isinf(sigma) and self.prediction_type == "epsilon":
                self(torch.zeros(1, 1), torch.tensor([sigma]))  # raises the same error as the tensor path
            alpha, sigma_t = self.schedule.alpha_sigma(torch.tensor(sigma, dtype=torch.float64))
            c_x, c_out = self.output_coefficients(alpha, sigma_t)
            scale_in = 1.0 if math.isinf(sigma) else float(alpha)
            self._scalar_cache[sigma] = (float(self.schedule.t(torch.tensor(sigma, dtype=torch.float64))), scale_in,
                                         float(c_x), float(c_out))
        return self._scalar_cache[sigma]

    def output_coefficients(self, alpha: torch.Tensor, sigma_t: torch.Tensor):
        """(c_x, c_out) with x0 = c_x * x_t + c_out * model_output (the table above)."""
        kind = self.prediction_type
        if kind == "epsilon":
            return 1 / alpha, -sigma_t / alpha
        if kind == "v_prediction":
            norm = alpha**2 + sigma_t**2
            return alpha / norm, -sigma_t / norm
        if kind == "flow":
            norm = alpha + sigma_t
            return 1 / norm, -sigma_t / norm
        return torch.zeros_like(alpha), torch.ones_like(alpha)


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
