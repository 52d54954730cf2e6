"""The user-facing settings, their names and their checks, importable without torch.

The command line checks every flag with these before it imports torch or loads a model, so a bad
argument is refused in a fraction of a second; the library calls the same functions (through
``difflab.sampling.validate_settings``, which passes the live sampler registry), so each rule is
written once.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from difflab import limits

# The built-in samplers in their documented order (``difflab.SAMPLERS`` holds the functions).
SAMPLER_NAMES = ("ddpm", "ddim", "plms", "euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms",
                 "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "unipc", "deis", "lcm")
SPACINGS = ("leading", "trailing", "linspace", "karras", "exponential")
# Training: the denoising objective's loss weightings and timestep distributions.
WEIGHTINGS = ("uniform", "min_snr", "min_snr_plus_one")
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")


def validate_settings(sampler, steps, spacing, guidance_scale, samplers=SAMPLER_NAMES) -> None:
    """Checks of the four user-facing sampling settings (arguments, a package's defaults, a recipe)."""
    if not isinstance(sampler, str) or sampler not in samplers:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(samplers)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    limits.check("steps", steps, "sampling steps")
    if spacing is not None and spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
            or not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")


def validate_text(prompt, name: str = "prompt") -> str:
    """A prompt as text: a ``str`` within the length limit that is valid UTF-8 (no lone surrogates,
    which a non-UTF-8 command-line argument decodes to)."""
    if isinstance(prompt, (bytes, bytearray)):
        raise ValueError(f"{name} is not valid UTF-8 text: got {type(prompt).__name__}, pass a str")
    if not isinstance(prompt, str):
        raise ValueError(f"{name} must be a string, got {type(prompt).__name__}")
    limits.check("prompt_chars", len(prompt), f"{name} length in characters")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{name} is not valid UTF-8 text: {error.object[error.start:error.end]!r} at character "
                         f"{error.start} (a command-line argument in another encoding?)") from None
    return prompt


def package_folder(folder) -> Path:
    """The path of a model package folder (config.json) or a diffusers pipeline folder
    (model_index.json), checked before anything loads."""
    if not isinstance(folder, (str, os.PathLike)):
        raise ValueError(f"Pipeline.from_pretrained(folder): folder must be the path of a model package folder "
                         f"(a str or os.PathLike), got {type(folder).__name__} {folder!r}"[:300])
    folder = Path(folder)
    if not (folder / "config.json").is_file() and not (folder / "model_index.json").is_file():
        raise ValueError(f"{folder} is not a difflab model package (no config.json) nor a diffusers folder "
                         f"(no model_index.json)")
    return folder
