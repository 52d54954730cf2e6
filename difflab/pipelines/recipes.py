"""Recipes and results: every image carries the JSON recipe that replays it.

A recipe is a JSON dict (prompt, negative prompt, seed, sampler, steps, spacing, guidance, size,
model name and weights hash, difflab version) stored in each PNG's text chunk ``difflab``;
``Pipeline.replay(recipe)`` regenerates the identical image. :func:`read_recipe` and ``replay``
check a recipe with :func:`validate_recipe` (types, limits) before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, PngImagePlugin

from difflab import limits
from difflab.settings import validate_block_cache, validate_deep_cache, validate_guidance_method, validate_text
from difflab.outputs import check_output_folder, free_names, write_file
from difflab.settings import a1111_parameters, validate_settings

RECIPE_KEY = "difflab"
REQUIRED_KEYS = ("prompt", "seed", "steps", "sampler", "guidance_scale", "spacing")
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


@dataclass
class Result:
    """What a pipeline call returns: ``images`` (PIL; a video model's clips as filmstrips, an audio
    model's spectrograms), ``recipes`` (one per output), and for a video model ``videos`` (uint8
    arrays ``[T, H, W, C]``), for an audio model ``audio`` (float waveforms) at ``sample_rate``."""

    images: list[Image.Image]
    recipes: list[dict]
    videos: list | None = None
    audio: list | None = None
    sample_rate: int | None = None

    def grid(self, columns: int | None = None) -> Image.Image:
        columns = columns or min(len(self.images), 8)
        rows = -(-len(self.images) // columns)
        w, h = self.images[0].size
        canvas = Image.new("RGB", (columns * w, rows * h), "white")
        for i, image in enumerate(self.images):
            canvas.paste(image.convert("RGB"), ((i % columns) * w, (i // columns) * h))
        return canvas

    def save(self, folder, prefix: str = "image", overwrite: bool = False, inputs=(), video_format: str = "mp4") -> list[Path]:
        """Files ``PREFIX-SEED-INDEX.EXT`` with their recipes, written atomically (:mod:`difflab.outputs`):
        PNGs, or a video model's clips as MP4 (``video_format="gif"``: GIF), an audio model's as WAV.
        Taken names get a counter prefix unless ``overwrite``; links and ``inputs`` are never
        replaced. Returns the paths written."""
        from difflab.pipelines import media_files
        if self.videos is not None and video_format not in media_files.VIDEO_FORMATS:
            raise ValueError(f"video_format must be one of {', '.join(media_files.VIDEO_FORMATS)}, got {video_format!r}")
        folder = check_output_folder(folder)
        suffix = video_format if self.videos is not None else "wav" if self.audio is not None else "png"
        names = [f"{prefix}-{recipe['seed']}-{i:03d}.{suffix}" for i, recipe in enumerate(self.recipes)]
        paths = free_names(folder, names, overwrite, inputs)
        if self.videos is not None:
            return [media_files.save_video(clip, recipe, path, overwrite=overwrite, inputs=inputs)
                    for clip, recipe, path in zip(self.videos, self.recipes, paths)]
        if self.audio is not None:
            return [media_files.save_wav(wave, self.sample_rate, recipe, path, overwrite=overwrite, inputs=inputs)
                    for wave, recipe, path in zip(self.audio, self.recipes, paths)]
        return [save_png(image, recipe, path, overwrite, inputs)
                for image, recipe, path in zip(self.images, self.recipes, paths)]


def save_png(image: Image.Image, recipe: dict, path, overwrite: bool = False, inputs=()) -> Path:
    """One PNG carrying its recipe, written atomically; returns the path written (see ``Result.save``)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(RECIPE_KEY, json.dumps(recipe, sort_keys=True))
    info.add_text("parameters", a1111_parameters(recipe))  # AUTOMATIC1111's PNG Info, Civitai, ComfyUI
    return write_file(path, lambda f: image.save(f, format="PNG", pnginfo=info), overwrite, inputs)


def read_recipe(path) -> dict:
    """The recipe stored in a PNG (or MP4, GIF, WAV) written by difflab, checked by
    :func:`validate_recipe`. A PNG's size is checked on its header and its pixels are not decoded
    (difflab writes the recipe first)."""
    if isinstance(path, (str, os.PathLike)) and Path(path).suffix.lower() in (".mp4", ".gif", ".wav"):
        from difflab.pipelines.media_files import read_media_recipe
        recipe = read_media_recipe(path)
        if recipe is None:
            raise ValueError(f"{path} holds no difflab recipe (was it written by difflab generate?)")
        return validate_recipe(recipe, path)
    try:
        with limits.open_image(path, "recipe image") as image:
            text = image.info.get(RECIPE_KEY)
            if text is None and hasattr(image, "text"):
                text = image.text.get(RECIPE_KEY)  # a text chunk after the pixels: decodes them
    except limits.LimitError:
        raise
    except (OSError, ValueError, SyntaxError) as error:
        raise ValueError(f"cannot read {path} as an image: {error}") from None
    if text is None:
        raise ValueError(f"{path} holds no difflab recipe (was it written by difflab generate?)")
    try:
        recipe = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{path}: the difflab recipe is not valid JSON: {error}") from None
    return validate_recipe(recipe, path)


def validate_recipe(recipe, source) -> dict:
    """Check a recipe (from ``source``, named in every error) before it is replayed: a JSON object
    with the keys a replay needs, each of the right type and within :mod:`difflab.limits`. Returns
    the recipe unchanged; a bad one raises one ``ValueError`` line (``LimitError`` for a limit)."""
    where = f"{source}: the difflab recipe"
    if not isinstance(recipe, dict):
        raise ValueError(f"{where} must be a JSON object, got a JSON {_JSON_TYPES.get(type(recipe), 'value')}")
    missing = [key for key in REQUIRED_KEYS if key not in recipe]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(map(repr, missing))}")
    try:
        _check_fields(recipe)
        validate_settings(recipe["sampler"], recipe["steps"], recipe["spacing"], recipe["guidance_scale"])
    except ValueError as error:
        raise type(error)(f"{where}: {error}") from None
    return recipe


def _check_fields(recipe: dict) -> None:
    for key in ("prompt", "negative_prompt"):
        value = recipe.get(key)
        if value is not None and not _is_int(value):  # None and ints: a class-label model's labels
            validate_text(value, key)
    seed = recipe["seed"]
    if not _is_int(seed) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}"[:200])
    for key, low, high in (("guidance_rescale", 0, 1), ("strength", 0, 1), ("mask_blur", 0, math.inf)):
        value = recipe.get(key)
        if value is not None and not (_is_number(value) and low <= value <= high):
            raise ValueError(f"{key} must be a number in [{low}, {high}], got {value!r}"[:200])
    if recipe.get("guidance_method") is not None:
        validate_guidance_method(recipe["guidance_method"])
    validate_deep_cache(recipe.get("deep_cache"))
    validate_block_cache(recipe.get("block_cache"))
    loras = recipe.get("loras")
    if loras is not None and not (isinstance(loras, list) and all(
            isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("sha256"), str)
            and _is_number(e.get("scale")) for e in loras)):
        raise ValueError(f"loras must be a list of {{name, sha256, scale}}, got {loras!r}"[:200])
    outpaint = recipe.get("outpaint")
    if outpaint is not None and not (isinstance(outpaint, list) and len(outpaint) == 4
                                     and all(_is_int(v) and v >= 0 for v in outpaint)):
        raise ValueError(f"outpaint must be a list of four non-negative integers, got {outpaint!r}"[:200])
    for key in ("image", "mask", "weights"):
        if recipe.get(key) is not None and not isinstance(recipe[key], str):
            raise ValueError(f"{key} must be a hash string, got {recipe[key]!r}"[:200])


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def weights_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    with open(Path(folder) / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def adapters_base(controlnet=None, ip_adapter=None, loras=()) -> str | None:
    """The model to load when none is named but adapters are: the base the first of them records (a
    difflab ControlNet or IP-Adapter package's ``config.json``, a difflab LoRA file's ``base`` header) if
    it names a bundled model or a package that exists here; else None (the default model). So
    ``--controlnet shapes-layout`` alone runs on the model that ControlNet was trained for."""
    from difflab.settings import BUNDLED_MODELS, package_folder
    paths = []
    for given in (controlnet, ip_adapter, loras):
        paths += [] if given is None else list(given) if isinstance(given, (list, tuple)) else [given]
    for given in paths:
        try:
            path = package_folder(given)      # a bundled name, a package folder or a file, as the loaders read it
        except ValueError:
            continue                          # the loaders refuse it with their own message
        base = _recorded_base(path)
        if isinstance(base, str) and (base in BUNDLED_MODELS or (Path(base).expanduser() / "config.json").is_file()):
            return base
    return None


def _recorded_base(path: Path):
    from safetensors import SafetensorError, safe_open
    try:
        if (path / "config.json").is_file():
            header = json.loads((path / "config.json").read_text())
            section = header.get("controlnet") or header.get("ip_adapter") or {}
            return section.get("base") if isinstance(section, dict) else None
        if path.is_file() and path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as f:
                return (f.metadata() or {}).get("base")
    except (OSError, ValueError, AttributeError, SafetensorError):   # unreadable here: its loader says why
        return None
    return None


def bundled_model_with_weights(weights) -> str | None:
    """The name of the bundled model whose weights hash is ``weights`` (a recipe's), or None: a recipe
    made with an earlier default (``shapes-v1``) replays on it, not on today's default."""
    from difflab.settings import BUNDLED_MODELS
    seen = set()
    for name, folder in BUNDLED_MODELS.items():   # an alias's folder is hashed once
        if isinstance(weights, str) and folder not in seen and (folder / "model.safetensors").is_file():
            seen.add(folder)
            if weights_hash(folder) == weights:
                return name
    return None
