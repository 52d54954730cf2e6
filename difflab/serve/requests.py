"""A job request: its JSON schema (pydantic, shown at ``/docs``) and every check, before it is queued.

A bad field is a ``FieldError`` naming it; the app answers 422 with FastAPI's own error shape
(``{"detail": [{"loc": ["body", FIELD], "msg": ...}]}``), so a client handles schema errors and
difflab's checks alike. The checks are difflab's own (:mod:`difflab.settings`, :mod:`difflab.limits`)
with the chosen model's defaults filled in; the pipeline checks again when it runs, so nothing the
server accepted can reach the network unchecked. Images come as an upload id (``POST
/api/v1/uploads``) or inline as base64 / a ``data:`` URL, bounded in bytes and in pixels (on the
header, before decoding).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import secrets
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from difflab import limits
from difflab.settings import SPACINGS, validate_settings, validate_text

UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
DATA_URL = re.compile(r"^data:image/[a-z0-9.+-]+;base64,", re.IGNORECASE)
Number = StrictInt | StrictFloat


class FieldError(ValueError):
    """A request field that cannot be accepted: ``field`` names it, the message says why."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class JobRequest(BaseModel):
    """The generation settings of one job; null means the model's default."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: StrictStr = Field(description="what to draw")
    negative_prompt: StrictStr | None = Field(None, description="what to steer away from")
    num_images: StrictInt = Field(1, description="images of this prompt, seeds seed, seed+1, ...")
    seed: StrictInt | None = Field(None, description="first seed; null: random (recorded in the recipe)")
    steps: StrictInt | None = None
    sampler: StrictStr | None = Field(None, description="one of GET /api/v1/samplers")
    guidance_scale: Number | None = None
    spacing: StrictStr | None = Field(None, description="sigma spacing: " + ", ".join(SPACINGS))
    width: StrictInt | None = Field(None, description="pixels; a multiple of the model's size_multiple")
    height: StrictInt | None = None
    model: StrictStr | None = Field(None, description="a name from GET /api/v1/models; null: the first")
    image: StrictStr | None = Field(None, description="image to edit: an upload id, base64 or a data: URL")
    mask: StrictStr | None = Field(None, description="inpainting mask (white = regenerate), as image")
    strength: Number | None = Field(None, description="image-to-image: noise level to start from, as a fraction of the schedule, 0..1 (SDEdit)")
    outpaint: list[StrictInt] | None = Field(None, description="outpainting: [left, right, top, bottom] pixels")
    mask_blur: Number = Field(0.0, description="feather the inpainting seam (pixels)")


def check_request(request: JobRequest, models: dict, uploads: Path, max_image_bytes: int) -> tuple[dict, dict]:
    """Check every field against the chosen model; returns (the settings as recorded, the decoded
    images ``{"image": PIL or None, "mask": PIL or None}``). Raises :class:`FieldError`."""
    name = request.model or next(iter(models))
    if name not in models:
        raise FieldError("model", f"unknown model {name!r}; this server has {', '.join(models)}")
    model = models[name]
    _check_text(request)
    _field("num_images", lambda: _check_count(request.num_images))
    if request.seed is not None and not 0 <= request.seed < 2**63:
        raise FieldError("seed", f"seed must be an integer in [0, 2**63), got {request.seed}")
    _check_sampling(request, model["defaults"])
    images = {key: _field(key, lambda key=key: decode_image(getattr(request, key), key, uploads, max_image_bytes))
              for key in ("image", "mask")}
    _check_edit(request, images, model)
    settings = request.model_dump()
    settings["model"] = name
    for key in ("image", "mask"):  # recorded by reference, not by value
        value = settings[key]
        settings[key] = None if value is None else value if UPLOAD_ID.match(value) else "inline"
    return settings, images


def _field(name: str, check):
    try:
        return check()
    except FieldError:
        raise
    except ValueError as error:
        raise FieldError(name, str(error)) from None


def _check_text(request: JobRequest) -> None:
    for key in ("prompt", "negative_prompt"):
        value = getattr(request, key)
        if value is not None:
            _field(key, lambda: validate_text(value, key))
    if not request.prompt.strip():
        raise FieldError("prompt", "prompt is empty; say what to draw")


def _check_count(n: int) -> None:
    if n < 1:
        raise ValueError(f"num_images must be a positive integer, got {n}")
    limits.check("images", n, "num_images")


def _check_sampling(request: JobRequest, defaults: dict) -> None:
    """Each sampling setting on its own, the model's defaults standing in for the others."""
    chosen = {key: getattr(request, key) for key in ("sampler", "steps", "spacing", "guidance_scale")}
    for key, value in chosen.items():
        if value is None:
            continue
        values = {**defaults, key: value}
        _field(key, lambda: validate_settings(values["sampler"], values["steps"], values["spacing"],
                                              values["guidance_scale"]))


def _check_edit(request: JobRequest, images: dict, model: dict) -> None:
    if model["media"] != "image":
        _check_media(request, model)
        return
    image, mask = images["image"], images["mask"]
    for key in ("mask", "strength", "outpaint"):
        if getattr(request, key) is not None and image is None:
            raise FieldError(key, f"{key} edits an input image: give image too")
    if mask is not None and request.outpaint is not None:
        raise FieldError("outpaint", "choose one edit: mask (inpainting) or outpaint, not both")
    if mask is not None and mask.size != image.size:
        raise FieldError("mask", f"mask is {mask.width}x{mask.height} but image is {image.width}x{image.height}")
    if request.strength is not None and not 0 <= request.strength <= 1:
        raise FieldError("strength", f"strength must be a number in [0, 1], got {request.strength}")
    if not (math.isfinite(request.mask_blur) and request.mask_blur >= 0):
        raise FieldError("mask_blur", f"mask_blur must be a number >= 0 (pixels), got {request.mask_blur}")
    width, height = _output_size(request, image, model["resolution"])
    multiple = model["size_multiple"]
    edit = "outpaint" if request.outpaint is not None else "image" if image is not None else None
    for side, value in (("width", width), ("height", height)):
        if value % multiple or value < multiple:
            raise FieldError(edit or side, f"model {model['name']!r} takes image sides that are multiples of "
                                           f"{multiple}; the output would be {width}x{height}")
    where = edit or ("width" if request.width is not None else "height")
    _field(where, lambda: limits.check("pixels", width * height, f"pixels of the output ({width}x{height})"))
    _field(where, lambda: limits.check("batch_values", request.num_images * model["channels"] * width * height,
                                       f"values of {request.num_images} image(s) of {width}x{height}"))


def _check_media(request: JobRequest, model: dict) -> None:
    """A video or audio model: prompt to clip at the model's own size; no image edits, no resizing."""
    for key in ("image", "mask", "strength", "outpaint", "width", "height"):
        if getattr(request, key) is not None:
            raise FieldError(key, f"model {model['name']!r} makes {model['media']} from a prompt at its own size; "
                                  f"the web app edits and resizes images only: leave {key} out")
    frames = model.get("frames") or 1
    _field("num_images", lambda: limits.check(
        "batch_values", request.num_images * model["channels"] * frames * model["resolution"] ** 2,
        f"values of {request.num_images} clip(s)"))


def _output_size(request: JobRequest, image, resolution: int) -> tuple[int, int]:
    for key in ("width", "height"):
        value = getattr(request, key)
        if value is not None and value < 1:
            raise FieldError(key, f"{key} must be a positive integer (pixels), got {value}")
        if value is not None and image is not None:
            raise FieldError(key, f"an edit's size is set by its image ({image.width}x{image.height}); leave {key} out")
    if image is None:
        return request.width or resolution, request.height or resolution
    if request.outpaint is None:
        return image.size
    margins = request.outpaint
    if len(margins) != 4 or min(margins) < 0 or not any(margins):
        raise FieldError("outpaint", f"outpaint must be [left, right, top, bottom] pixels >= 0, not all 0; got {margins}")
    return image.width + margins[0] + margins[1], image.height + margins[2] + margins[3]


def decode_image(value: str | None, what: str, uploads: Path, max_bytes: int):
    """An image field's value as a decoded PIL image (None stays None): an upload id names a file in
    ``uploads``; anything else is base64, bounded by ``max_bytes`` before it is decoded."""
    if value is None:
        return None
    if UPLOAD_ID.match(value):
        path = uploads / f"{value}.png"
        if not path.is_file():
            raise FieldError(what, f"no upload with id {value} (POST the file to /api/v1/uploads first)")
        return read_image(path.read_bytes(), what)
    text = DATA_URL.sub("", value, count=1)
    if len(text) > max_bytes * 4 // 3 + 4:
        raise FieldError(what, f"{what} is larger than {max_bytes:,} bytes; upload it to /api/v1/uploads")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FieldError(what, f"{what} must be an upload id or a base64 image (optionally a data: URL)") from None
    return read_image(data, what)


def read_image(data: bytes, what: str):
    """Bytes as a decoded image, its pixels checked on the header first (:func:`limits.open_image`)."""
    from PIL import Image, UnidentifiedImageError
    buffer = io.BytesIO(data)
    try:
        with limits.open_image(buffer, what) as image:
            image.load()
            return image.copy()
    except limits.LimitError as error:
        raise FieldError(what, str(error).replace(f" {buffer}", "")) from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise FieldError(what, f"{what} cannot be read as an image ({' '.join(str(error).split())[:200]})") from None


def new_id() -> str:
    return secrets.token_hex(16)
