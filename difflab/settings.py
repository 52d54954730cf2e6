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
# AUTOMATIC1111's names of the same samplers (its "Sampler:" field; a spacing is its schedule type).
A1111_SAMPLERS = {"euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "dpm_2": "DPM2",
                  "dpm_2_ancestral": "DPM2 a", "lms": "LMS", "dpmpp_2s_ancestral": "DPM++ 2S a", "dpmpp_sde": "DPM++ SDE",
                  "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_sde": "DPM++ 2M SDE", "dpmpp_3m_sde": "DPM++ 3M SDE",
                  "ddim": "DDIM", "plms": "PLMS", "unipc": "UniPC", "deis": "DEIS", "lcm": "LCM", "ddpm": "DDPM"}
A1111_SCHEDULES = {"karras": "Karras", "exponential": "Exponential"}
# Training: the denoising objective's loss weightings and timestep distributions.
WEIGHTINGS = ("uniform", "min_snr", "min_snr_plus_one")
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal", "terminal")


def validate_settings(sampler, steps, spacing, guidance_scale, samplers=SAMPLER_NAMES) -> None:
    """Checks of the four user-facing sampling settings (arguments, a package's defaults, a recipe)."""
    if not isinstance(sampler, str) or sampler not in samplers:
        raise ValueError(f"unknown sampler {sampler!r}{sampler_hint(sampler)}; choose one of {', '.join(samplers)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    limits.check("steps", steps, "sampling steps")
    if spacing is not None and spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
            or not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")


def sampler_hint(name) -> str:
    """For an A1111 sampler name ("DPM++ 2M Karras"), the difflab sampler and spacing it means."""
    if not isinstance(name, str):
        return ""
    words = name.strip().lower().split()
    spacing = next((ours for ours, theirs in A1111_SCHEDULES.items() if words and words[-1] == theirs.lower()), None)
    base = " ".join(words[:-1] if spacing else words)
    ours = next((k for k, v in A1111_SAMPLERS.items() if v.lower() == base), None)
    if ours is None:
        return ""
    return f" (AUTOMATIC1111's name for sampler {ours!r}" + (f" with spacing {spacing!r})" if spacing else ")")


def a1111_parameters(recipe: dict) -> str:
    """A recipe in AUTOMATIC1111's ``parameters`` text (its PNG Info; read by Civitai and ComfyUI
    too). difflab's JSON recipe stays the source of truth; this is for the other tools."""
    sampler = A1111_SAMPLERS.get(recipe.get("sampler"), recipe.get("sampler"))
    schedule = A1111_SCHEDULES.get(recipe.get("spacing"))
    fields = [("Steps", recipe.get("steps")), ("Sampler", f"{sampler} {schedule}" if schedule else sampler),
              ("CFG scale", recipe.get("guidance_scale")), ("Seed", recipe.get("seed")),
              ("Size", f"{recipe.get('width')}x{recipe.get('height')}" if recipe.get("width") else None),
              ("Model hash", recipe.get("weights")), ("Model", recipe.get("model")),
              ("Denoising strength", recipe.get("strength")), ("Version", f"difflab {recipe.get('difflab', '')}".strip())]
    lines = [str(recipe.get("prompt", ""))]
    if recipe.get("negative_prompt"):
        lines.append(f"Negative prompt: {recipe['negative_prompt']}")
    lines.append(", ".join(f"{key}: {value}" for key, value in fields if value not in (None, "")))
    return "\n".join(lines)


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


# How the conditional and unconditional predictions combine (difflab.guidance implements each).
GUIDANCE_METHODS = ("cfg", "apg", "cfg_zero_star", "cfg_pp")
CFG_PP_SAMPLERS = ("euler", "ddim")  # cfg_pp needs a step from grid point to grid point through x0 alone


def validate_guidance_method(method, name: str = "guidance_method") -> str:
    if method not in GUIDANCE_METHODS:
        raise ValueError(f"{name} must be one of {', '.join(GUIDANCE_METHODS)}, got {method!r}"[:200])
    return method


def validate_guidance_flags(method, sampler, scale) -> None:
    """The command line's --guidance-method with --sampler / --guidance, where None means the model's
    default: cfg_pp needs both given, since a model's defaults are chosen for plain CFG."""
    validate_guidance_method(method, "--guidance-method")
    if method == "cfg_pp" and (sampler is None or scale is None):
        raise ValueError(f"--guidance-method cfg_pp needs --sampler ({' or '.join(CFG_PP_SAMPLERS)}) and "
                         f"--guidance LAMBDA in [0, 1]: a model's defaults are chosen for plain cfg")
    validate_guidance_pairing(method, sampler, scale)


def validate_guidance_pairing(method, sampler, scale, options: dict | None = None) -> None:
    """cfg_pp (CFG++) takes a scale lambda in [0, 1] and a sampler of ``CFG_PP_SAMPLERS`` (DDIM with eta 0);
    the other methods take any sampler and scale."""
    if method != "cfg_pp":
        return
    if sampler not in CFG_PP_SAMPLERS or (options or {}).get("eta", 0.0):
        raise ValueError(f"guidance method cfg_pp works with the samplers {', '.join(CFG_PP_SAMPLERS)} "
                         f"(deterministic), not {sampler!r}"[:200])
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.0 <= scale <= 1.0:
        raise ValueError(f"guidance method cfg_pp takes a guidance scale lambda in [0, 1] (Chung et al. 2024), "
                         f"got {scale!r}"[:200])


def validate_deep_cache(interval, name: str = "deep_cache") -> int | None:
    """None (off) or how often DeepCache recomputes the deep features: an integer in [1, 100]."""
    if interval is not None and (isinstance(interval, bool) or not isinstance(interval, int)
                                 or not 1 <= interval <= 100):
        raise ValueError(f"{name} must be an integer in [1, 100], got {interval!r}"[:200])
    return interval


def validate_block_cache(threshold, name: str = "block_cache") -> float | None:
    """None (off) or the first-block cache's threshold: a number in (0, 1] (relative change of the first
    block's output below which a transformer's other blocks are skipped; :mod:`difflab.models.block_cache`)."""
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not 0 < threshold <= 1):
        raise ValueError(f"{name} must be a number in (0, 1], got {threshold!r}"[:200])
    return threshold


# Models that ship inside difflab, by name: ``--model shapes-v1`` works from any folder. A path that
# exists wins over a name, so a local folder called "shapes" is still that folder.
BUNDLED_MODELS = {"shapes": Path(__file__).parent / "assets" / "models" / "shapes"}   # v1.1, 32x32 (default until v2.1)
BUNDLED_MODELS["shapes-v1"] = BUNDLED_MODELS["shapes"].parent / "shapes-v1"   # the first bundled model (default until v1.1)
BUNDLED_MODELS["shapes-v1.1"] = BUNDLED_MODELS["shapes"]    # v1 taught the relation word (a curriculum), kept by name
BUNDLED_MODELS["shapes-v2"] = BUNDLED_MODELS["shapes"].parent / "shapes-v2"   # a 32x32 model behind a 2x decoder: 64x64
BUNDLED_MODELS["shapes-video"] = BUNDLED_MODELS["shapes"].parent / "shapes-video"   # moving shapes, 8 x 32 x 32
BUNDLED_MODELS["sounds"] = BUNDLED_MODELS["shapes"].parent / "sounds"               # 1 s sounds as log-mel
BUNDLED_MODELS["shapes-fast"] = BUNDLED_MODELS["shapes"].parent / "shapes-fast"     # LCM student of shapes-v2: 4 steps, 64x64
BUNDLED_MODELS["shapes-layout"] = BUNDLED_MODELS["shapes"].parent / "shapes-layout"  # layout ControlNet of shapes
BUNDLED_MODELS["shapes-ip"] = BUNDLED_MODELS["shapes"].parent / "shapes-ip"          # IP-Adapter of shapes
BUNDLED_MODELS["shapes-v2.1"] = BUNDLED_MODELS["shapes"].parent / "shapes-v2.1"      # shapes-v2 taught binding: 64x64
BUNDLED_MODELS["shapes-v2.1-ip"] = BUNDLED_MODELS["shapes"].parent / "shapes-v2.1-ip"  # IP-Adapter of shapes-v2.1
# The model that runs when none is named (the CLI, the web app, ``Pipeline.from_pretrained()``); a bundled
# adapter or LoRA named without a model brings its own base instead (difflab.pipelines.recipes.adapters_base).
DEFAULT_MODEL = "shapes-v2.1"


def package_folder(folder) -> Path:
    """The path of a model package folder (config.json), a diffusers pipeline folder
    (model_index.json), a single-file checkpoint or a bundled model's name (:data:`BUNDLED_MODELS`),
    checked before anything loads."""
    if not isinstance(folder, (str, os.PathLike)):
        raise ValueError(f"Pipeline.from_pretrained(folder): folder must be the path of a model package folder "
                         f"(a str or os.PathLike), got {type(folder).__name__} {folder!r}"[:300])
    if isinstance(folder, str) and folder in BUNDLED_MODELS and not Path(folder).exists():
        return BUNDLED_MODELS[folder]
    folder = Path(folder).expanduser()
    if folder.is_file():  # a single-file checkpoint: difflab.convert.single_file checks its kind and content
        return folder
    if not (folder / "config.json").is_file() and not (folder / "model_index.json").is_file():
        raise ValueError(f"{folder} is not a difflab model package (no config.json), a diffusers folder "
                         f"(no model_index.json) nor a single .safetensors checkpoint; bundled models by name: "
                         f"{', '.join(BUNDLED_MODELS)}")
    return folder
