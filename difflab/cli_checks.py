"""The command line's checks of generate's flags: every value refused in one clear line before
torch is imported or a model loads (:mod:`difflab.cli` calls them; importing this needs no torch)."""

from __future__ import annotations

from pathlib import Path


def one_line(text) -> str:
    return " ".join(str(text).split())


def check_settings(prompt, negative, n: int, steps, sampler, spacing, guidance) -> None:
    """The text and sampling flags, checked (with difflab.limits) before the model loads; None is the
    model's default, checked when it loads."""
    from difflab import limits
    from difflab.settings import validate_settings, validate_text

    for text, name in ((prompt, "PROMPT"), (negative, "--negative")):
        if text is not None:
            validate_text(text, name)
    if n < 1:
        raise ValueError(f"-n must be a positive integer, got {n}")
    limits.check("images", n, "images per call (-n)")
    validate_settings(sampler or "euler", 1 if steps is None else steps, spacing,
                      1.0 if guidance is None else guidance)


def check_edit_flags(image, strength, mask, outpaint, mask_blur):
    """The edit flags, checked before the model loads; returns the outpaint margins."""
    import math

    if image is None and (mask is not None or strength is not None or outpaint is not None):
        raise ValueError("--strength, --mask and --outpaint edit an input image: give --image too")
    if mask is not None and outpaint is not None:
        raise ValueError("choose one edit: --mask (inpainting) or --outpaint, not both")
    if strength is not None and not 0 <= strength <= 1:
        raise ValueError(f"--strength must be a number in [0, 1], got {strength}")
    if not (math.isfinite(mask_blur) and mask_blur >= 0):
        raise ValueError(f"--mask-blur must be a number >= 0 (pixels), got {mask_blur}")
    return parse_outpaint(outpaint)


def check_outpaint_canvas(size: tuple[int, int], margins) -> None:
    """The outpainted canvas against the output-pixel limit, before the model loads (in pixel space the
    canvas is the model-space size; a latent model's check in the pipeline is stricter, not looser)."""
    from difflab import limits

    left, right, top, bottom = margins
    width, height = size[0] + left + right, size[1] + top + bottom
    limits.check("pixels", width * height, f"--outpaint: pixels of the outpainted image ({width}x{height})")


def open_image(path: str | None, flag: str):
    if path is None:
        return None
    from PIL import UnidentifiedImageError

    from difflab import limits
    try:
        with limits.open_image(path, flag) as image:  # its size is checked before any pixel is decoded
            image.load()
            return image.copy()
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise ValueError(f"{flag} {path}: cannot read it as an image ({one_line(error)})") from None


def parse_outpaint(text: str | None):
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or min(values) < 0 or not any(values):
        raise ValueError(f"--outpaint takes four integers >= 0 (not all 0) LEFT,RIGHT,TOP,BOTTOM, got {text!r}")
    return tuple(values)


def parse_loras(specs: list[str] | None) -> list[tuple[str, float]]:
    """``--lora PATH[:SCALE]`` values -> (path, scale); the file must exist, the scale lie in [-10, 10]."""
    import math

    loras = []
    for spec in specs or []:
        path, colon, scale = spec.rpartition(":")
        try:
            value = float(scale) if colon else 1.0
        except ValueError:                             # a ':' inside the path and no scale
            path, value = spec, 1.0
        if not colon:
            path = spec
        if not math.isfinite(value) or not -10 <= value <= 10:
            raise ValueError(f"--lora {spec}: the scale must be a number in [-10, 10]")
        if not Path(path).expanduser().exists():
            raise ValueError(f"--lora {spec}: {path} does not exist")
        loras.append((path, value))
    return loras


def read_prompts(path: str, n: int, seed: int | None) -> list[tuple[str, int]]:
    """``--prompts FILE`` -> this process's (prompt, seed) pairs.

    One prompt per line; blank lines and lines starting with ``#`` are skipped. Image i of the whole
    file (prompt by prompt, ``n`` each) gets seed ``seed + i``, and process RANK of WORLD_SIZE (as
    torchrun and ``accelerate launch`` set them) takes images RANK, RANK + WORLD_SIZE, ..., so every
    image is the same whatever the number of processes. Several processes need an explicit seed.
    """
    import os
    import secrets

    from difflab.settings import validate_text

    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"--prompts {path}: no such file")
    if file.stat().st_size > 10_000_000:
        raise ValueError(f"--prompts {path}: {file.stat().st_size:,} bytes; a prompt file is at most 10 MB")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"--prompts {path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if text and not text.startswith("#"):
            prompts.append(validate_text(text, f"--prompts {path} line {number}"))
    if not prompts:
        raise ValueError(f"--prompts {path}: no prompts (blank lines and # comments are skipped)")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if seed is None and world > 1:
        raise ValueError(f"--prompts across {world} processes needs --seed, so that every process numbers the "
                         "images the same way")
    base = seed if seed is not None else secrets.randbelow(2**31)
    pairs = [(prompt, base + i) for i, prompt in enumerate(p for p in prompts for _ in range(n))]
    return pairs[rank::world]



def check_control_flags(controlnets: list[str] | None, images: list[str] | None, scales: list[float] | None,
                        start: float, end: float) -> dict:
    """``--controlnet``/``--control-image``/``--control-scale``/``--control-start``/``--control-end`` ->
    the pipeline's control arguments (none without a ControlNet); every count, path and range checked."""
    controlnets, images, scales = controlnets or [], images or [], scales or []
    if not controlnets:
        if images or scales:
            raise ValueError("--control-image and --control-scale need a --controlnet")
        return {}
    if len(images) != len(controlnets):
        raise ValueError(f"give one --control-image per --controlnet ({len(controlnets)}), got {len(images)}")
    if len(scales) not in (0, 1, len(controlnets)):
        raise ValueError(f"--control-scale: give one value, or one per --controlnet ({len(controlnets)})")
    from difflab.settings import BUNDLED_MODELS
    for path in controlnets:
        if not Path(path).expanduser().is_dir() and path not in BUNDLED_MODELS:
            raise ValueError(f"--controlnet {path}: not a folder (a ControlNet package or a diffusers ControlNet) "
                             f"nor a bundled one")
    if not 0 <= start < end <= 1:
        raise ValueError(f"--control-start and --control-end must satisfy 0 <= start < end <= 1, got {start}, {end}")
    scales = scales * len(controlnets) if len(scales) == 1 else scales or [1.0] * len(controlnets)
    return {"control_image": [open_image(p, "--control-image") for p in images], "control_scale": scales,
            "control_start": start, "control_end": end}


def check_ip_flags(adapter: str | None, image: str | None, scale: float | None) -> dict:
    """``--ip-adapter``/``--ip-image``/``--ip-scale`` -> the pipeline's image-prompt arguments (no ``ip_scale``
    where ``--ip-scale`` is not given: the adapter's own default)."""
    if adapter is None:
        if image is not None:
            raise ValueError("--ip-image needs an --ip-adapter")
        return {}
    if image is None:
        raise ValueError("--ip-adapter needs an --ip-image (the image prompt)")
    from difflab.settings import BUNDLED_MODELS
    where = Path(adapter).expanduser()
    if not (where.is_dir() or adapter in BUNDLED_MODELS or where.is_file() and where.suffix == ".safetensors"):
        raise ValueError(f"--ip-adapter {adapter}: not a folder (an IP-Adapter package), a bundled one, nor an "
                         f"official IP-Adapter .safetensors file")
    if scale is not None and not 0 <= scale <= 5:
        raise ValueError(f"--ip-scale must be in [0, 5], got {scale}")
    return {"ip_image": open_image(image, "--ip-image")} | ({} if scale is None else {"ip_scale": scale})
