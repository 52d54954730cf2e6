"""``difflab.sample``: one call from unit noise (or shape + seeds) to samples in data space.

Every argument is checked before any compute; a bad one raises ``ValueError`` naming the argument
and what is allowed. VP and flow models start from x_T = z in their own coordinates (as diffusers
does), i.e. VE x = z / alpha(sigma_max); a pure-noise endpoint (sigma = inf) starts from z itself.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch

from difflab import limits, settings
from difflab.settings import validate_guidance_method
from difflab.denoisers import PREDICTION_TYPES, Denoiser, validate_prediction_type
from difflab.guidance import GUIDANCE_METHODS, Inpaint
from difflab.parameterization import get_parameterization
from difflab.noise import NoiseStreams, validate_seeds
from difflab.samplers import SAMPLER_INFO, SAMPLERS
from difflab.schedules import NoiseSchedule

# Chosen by benchmarks/samplers.py (BENCHMARKS.md, "Samplers"): with each schedule's default spacing
# (karras for VP, diffusers' flow grid for flow) DEIS-3 has the lowest ODE error at 6-50 NFE on the
# exact Gaussian and mixture problems: at 10 NFE 0.09x the error of diffusers' default
# DPMSolverMultistep configuration on VP, and 0.46x diffusers' FlowMatchEuler on flow.
DEFAULT_SAMPLER = "deis"
DEFAULT_STEPS = 20
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def sample(model, schedule: NoiseSchedule, prediction_type: str = "epsilon", sampler: str = DEFAULT_SAMPLER,
           steps: int = DEFAULT_STEPS, *, noise: torch.Tensor | None = None, shape: Sequence[int] | None = None,
           seeds: Sequence[int] | None = None, spacing: str | None = None, cond: dict | None = None,
           uncond: dict | None = None, guidance_scale: float = 1.0, guidance_rescale: float = 0.0,
           guidance_method: str = "cfg", sampler_options: dict | None = None, device=None, dtype: torch.dtype | None = None,
           callback: Callable | None = None, progress: bool = False, image: torch.Tensor | None = None,
           strength: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sample a native model ``model(x_t, t, **cond) -> prediction``.

    Give either ``noise`` (unit Gaussian, batch first) or ``shape`` (+ ``seeds``: one per sample, for
    batch-invariant, replayable noise streams; without seeds torch's global generator is used).
    ``cond``/``uncond`` are the model's keyword arguments for the prompt and the negative/empty
    prompt; guidance applies when ``guidance_scale != 1``, by ``guidance_method``: ``cfg`` (Ho &
    Salimans 2022), ``apg`` (adaptive projected guidance), ``cfg_zero_star`` or ``cfg_pp`` (CFG++: a
    scale in [0, 1], with euler or ddim; it guides at scale 1 too) (see :mod:`difflab.guidance`). Returns x0 in the model's data space.

    Editing (``image`` in data space, the shape of the output): ``strength`` < 1 is image-to-image
    by noise level (SDEdit, Meng et al. 2022, Sec. 3): the image is noised to the level at fraction
    ``strength`` of the schedule's model time and denoised from there on the spacing's grid of
    ``max(1, round(strength * steps))`` steps (see :func:`edit_sigmas`), so a strength changes the
    image by the same amount whatever the spacing. Strength 1 ignores the image and equals
    text-to-image; strength 0 returns the image. ``mask`` ([B or 1, 1, H, W] in [0, 1], 1 =
    regenerate) keeps the image outside the mask at every step and exactly in the result (inpainting).

    ``device`` (default: the model's) must exist here; ``dtype`` is a floating-point torch dtype or
    one of the names in ``DTYPES`` (default float32). Steps and the sample's size are bounded by
    :mod:`difflab.limits`.
    """
    _validate(schedule, prediction_type, sampler, steps, spacing, guidance_scale, guidance_rescale, cond, uncond)
    validate_guidance_method(guidance_method)
    options = _validate_options(sampler, sampler_options)
    settings.validate_guidance_pairing(guidance_method, sampler, guidance_scale, options)
    if guidance_method == "cfg_pp" and uncond is None:
        raise ValueError("guidance_method 'cfg_pp' needs uncond: the conditioning of the negative or empty prompt")
    streams = NoiseStreams(validate_seeds(seeds)) if seeds is not None else None
    device = validate_device(device) if device is not None else _model_device(model)
    dtype = validate_dtype(dtype)
    z = _initial_noise(noise, shape, streams, device, dtype)
    image, mask = _validate_edit(image, strength, mask, z)
    if image is not None and mask is None and strength == 0:
        return image.to(device=device, dtype=dtype)  # strength 0: nothing to run
    sigmas = schedule.sigmas(steps, spacing) if image is None else edit_sigmas(schedule, steps, spacing, strength)
    start_at_infinity = math.isinf(float(sigmas[0]))
    if start_at_infinity and not get_parameterization(prediction_type).handles_pure_noise:
        raise ValueError(f"this grid starts at pure noise (sigma = inf), which a model of the "
                         f"{get_parameterization(prediction_type).name} parameterization cannot denoise: use a spacing that starts below it (e.g. 'leading') or a "
                         "v/flow/sample model")

    denoiser = Denoiser(model, schedule, prediction_type)
    extra_args = dict(cond or {})
    if uncond is not None and (guidance_scale != 1.0 or guidance_method == "cfg_pp"):
        grid = {"sigmas": sigmas} if guidance_method == "cfg_pp" else {}
        denoiser = GUIDANCE_METHODS[guidance_method](denoiser, guidance_scale, guidance_rescale, **grid)
        extra_args = {"cond": dict(cond or {}), "uncond": dict(uncond)}
    alpha0, _ = schedule.alpha_sigma(sigmas[0])
    x = z if start_at_infinity else z / float(alpha0)
    if image is not None:
        image = image.to(device=device, dtype=dtype)
        if strength < 1 and not start_at_infinity:
            x = image + float(sigmas[0]) * z  # q(x_t | x0) in VE coordinates
        if mask is not None:
            mask = mask.to(device=device, dtype=dtype)
            denoiser = Inpaint(denoiser, image, mask, z)
            x = mask * x + (1 - mask) * (z if start_at_infinity else image + float(sigmas[0]) * z)

    total = _count_evals(sampler, len(sigmas) - 1, start_at_infinity)
    with _Progress(denoiser, total, progress) as counted:
        with torch.no_grad():
            out = SAMPLERS[sampler](counted, x, sigmas, extra_args=extra_args, callback=callback,
                                    noise=streams, **options)
    return out if mask is None else mask * out + (1 - mask) * image


def edit_sigmas(schedule: NoiseSchedule, steps: int, spacing: str | None, strength: float) -> torch.Tensor:
    """The sigma grid of an edit of ``strength`` in [0, 1] (SDEdit, Meng et al. 2022, Sec. 3: perturb
    the input to an intermediate time t0, then solve the reverse process from t0).

    The start is a noise level, not a step index: the sigma at model time ``strength * t_max``
    (t_max = T - 1 for discrete schedules, T for flow, where it is taken on the shifted grid as SD3's
    img2img does). diffusers' img2img starts within one of its steps of there on its leading /
    trailing grids (``init_timestep = int(steps * strength)``); cutting a karras grid by index does not:
    on a zero-terminal-SNR schedule its first steps all lie above sigma 40. Below the start runs the
    spacing's own grid of ``max(1, round(strength * steps))`` steps (``NoiseSchedule.sigmas(start=)``:
    karras from sigma(t0) to sigma_min, the timestep spacings scaled onto [0, t0]), so every spacing
    starts at the same sigma. Strength 1 is the full grid (text-to-image).
    """
    if strength == 1:
        return schedule.sigmas(steps, spacing)
    return schedule.sigmas(max(1, int(strength * steps + 0.5)), spacing, start=strength_time(schedule, strength))


def strength_time(schedule: NoiseSchedule, strength: float) -> float:
    """Model time where an edit of ``strength`` starts (see :func:`edit_sigmas`)."""
    if not schedule.is_flow:
        return strength * (schedule.num_train_timesteps - 1)
    shifted = schedule.shift * strength / (1 + (schedule.shift - 1) * strength)  # SD3 eq. 23
    return shifted * schedule.num_train_timesteps


def _validate_edit(image, strength, mask, z):
    """Checks of image / strength / mask; returns image and mask."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be a number in [0, 1], got {strength!r}")
    if image is None:
        if mask is not None or strength != 1.0:
            raise ValueError("strength < 1 and mask need an image to edit")
        return None, None
    if not isinstance(image, torch.Tensor) or image.shape != z.shape:
        raise ValueError(f"image must be a tensor of the output's shape {tuple(z.shape)}, "
                         f"got {getattr(image, 'shape', type(image).__name__)}")
    if not torch.isfinite(image).all():
        raise ValueError("image contains non-finite values")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.ndim != z.ndim or mask.shape[1] != 1 \
                or mask.shape[2:] != z.shape[2:] or mask.shape[0] not in (1, z.shape[0]):
            raise ValueError(f"mask must be a tensor [B or 1, 1, {', '.join(map(str, z.shape[2:]))}] matching the "
                             f"image, got {getattr(mask, 'shape', type(mask).__name__)}")
        if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
            raise ValueError("mask values must lie in [0, 1] (1 = regenerate)")
    return image, mask


def validate_settings(sampler, steps, spacing, guidance_scale) -> None:
    """Checks of the four user-facing sampling settings (also a model package's defaults and a recipe's),
    against the live sampler registry (see :mod:`difflab.settings`)."""
    settings.validate_settings(sampler, steps, spacing, guidance_scale, samplers=SAMPLERS)


def validate_guidance_rescale(guidance_rescale) -> None:
    if isinstance(guidance_rescale, bool) or not isinstance(guidance_rescale, (int, float)) \
            or not 0.0 <= guidance_rescale <= 1.0:
        raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale!r}")


def validate_device(device) -> torch.device:
    """A device that exists on this machine, else ``ValueError`` naming the ones that do."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device must be a torch device or its name (e.g. 'cpu', 'cuda:0'), got {device!r}") from None
    available = available_devices()
    if device.type == "cpu" or str(device) in available or (device.index is None and f"{device.type}:0" in available):
        return device
    raise ValueError(f"device {str(device)!r} is not available on this machine; available: {', '.join(available)}")


def available_devices() -> list[str]:
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps:0")
    return devices


def validate_dtype(dtype) -> torch.dtype:
    """None (float32), a floating-point torch dtype, or its name ("float16", "torch.bfloat16", ...)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point and dtype in DTYPES.values():
        return dtype
    raise ValueError(f"dtype must be a floating-point dtype, one of {', '.join(DTYPES)} (a torch.dtype or "
                     f"its name), got {dtype!r}")


def _validate(schedule, prediction_type, sampler, steps, spacing, guidance_scale, guidance_rescale, cond, uncond):
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"schedule must be a difflab.NoiseSchedule, got {type(schedule).__name__}")
    validate_prediction_type(prediction_type)
    validate_settings(sampler, steps, spacing, guidance_scale)
    validate_guidance_rescale(guidance_rescale)
    for name, value in (("cond", cond), ("uncond", uncond)):
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"{name} must be a dict of the model's keyword arguments, got {type(value).__name__}")
    if guidance_scale != 1.0 and uncond is None:
        raise ValueError("guidance_scale != 1 needs uncond: the conditioning of the negative or empty prompt")


def _validate_options(sampler: str, options: dict | None) -> dict:
    options = dict(options or {})
    allowed = [p for p in inspect.signature(SAMPLERS[sampler]).parameters
               if p not in ("denoiser", "x", "sigmas", "extra_args", "callback", "noise")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"sampler {sampler!r} takes the options {allowed or 'none'}, not {unknown}")
    return options


def _initial_noise(noise, shape, streams, device, dtype) -> torch.Tensor:
    if (noise is None) == (shape is None):
        raise ValueError("give exactly one of noise (a unit-Gaussian tensor, batch first) or shape")
    if noise is not None:
        if not isinstance(noise, torch.Tensor) or noise.ndim < 1 or noise.shape[0] < 1:
            raise ValueError("noise must be a tensor with a batch dimension first")
        if not torch.isfinite(noise).all():
            raise ValueError("noise contains non-finite values")
        if streams is not None and len(streams) != noise.shape[0]:
            raise ValueError(f"got {len(streams)} seeds for a batch of {noise.shape[0]}")
        limits.check_sample_shape(tuple(noise.shape))
        return noise.to(device=device, dtype=dtype)
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise ValueError(f"shape must be a tuple of positive integers, batch first; got {shape!r}")
    shape = tuple(shape)
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"shape must be a tuple of positive integers, batch first; got {shape!r}")
    limits.check_sample_shape(shape)
    if streams is None:
        return torch.randn(shape, device=device, dtype=dtype)
    if len(streams) != shape[0]:
        raise ValueError(f"got {len(streams)} seeds for a batch of {shape[0]} (shape {shape})")
    return streams.initial(shape, dtype=dtype, device=device)


def _model_device(model) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for parameter in model.parameters():
            return parameter.device
    return torch.device("cpu")


def _count_evals(sampler: str, steps: int, start_at_infinity: bool) -> int:
    info = SAMPLER_INFO[sampler]
    if not start_at_infinity:
        return info.evals(steps)
    return 1 + (info.evals(steps - 1) if steps > 1 else 0)


class _Progress:
    """Counts denoiser evaluations (NFE) and shows them as a progress bar when asked."""

    def __init__(self, denoiser, total: int, show: bool):
        self.denoiser, self.total, self.show, self.bar, self.evals = denoiser, total, show, None, 0

    def __enter__(self):
        if self.show:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=self.total, unit="eval", desc="sampling")
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()

    def __call__(self, x, sigma, **kwargs):
        self.evals += 1
        if self.bar is not None:
            self.bar.update(1)
        return self.denoiser(x, sigma, **kwargs)


__all__ = ["sample", "edit_sigmas", "strength_time", "DEFAULT_SAMPLER", "DEFAULT_STEPS", "DTYPES", "PREDICTION_TYPES",
           "validate_settings", "validate_device", "validate_dtype", "validate_guidance_method"]
