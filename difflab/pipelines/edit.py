"""Edits for the Pipeline: image-to-image, inpainting and outpainting, checked before any compute.

All three reduce to ``difflab.sample(image=, strength=, mask=)`` in model space (the codec encodes
the image and shrinks the mask), so they work with every sampler, every parameterization and every
codec (pixels or latents). The result is composed with the input again in data space, after
decoding (:meth:`Edit.result`): a latent inpaint keeps every unmasked pixel exactly too.
``strength`` is a noise level (SDEdit; see ``difflab.sampling.edit_sigmas``), the same amount of
change whatever the sigma spacing.
Outpainting pads the canvas by (left, right, top, bottom) pixels and inpaints the new border. For
a video model the image is the first frame of the clip (image-to-video: a mask in time).

Inputs are bounded before they cost anything (:mod:`difflab.limits`): an image file's pixels are
checked on its header before decoding (:func:`open_image`), and the output canvas (the image, or
the image plus the outpaint margins) before it is built. 8-bit modes are read as they are; a
16-bit grayscale image (mode ``I;16*`` or ``I``, values 0..65535) is scaled to 8 bits (v / 257,
rounded); other modes (float ``F``, ...) are refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from difflab import limits
from difflab.data.images import to_tensor

EIGHT_BIT_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass
class Edit:
    image: torch.Tensor                  # [B, C, H, W] in [-1, 1]
    strength: float
    mask: torch.Tensor | None            # [1, 1, H, W] in [0, 1], 1 = regenerate
    size: tuple[int, int]                # (width, height)
    record: dict

    def sample_args(self, codec) -> dict:
        """The edit in model space, as ``difflab.sample``'s keyword arguments."""
        mask = None if self.mask is None else codec.downsample_mask(self.mask)
        return {"image": codec.encode(self.image), "strength": self.strength, "mask": mask}

    def result(self, codec, x: torch.Tensor) -> torch.Tensor:
        """Model-space samples -> the edit's images in data space, [-1, 1]. Decoding is composed
        with the input in data space (:meth:`Codec.compose`), so an inpainted or outpainted image
        keeps every unmasked pixel exactly, with a latent codec too; strength 0 is the input."""
        if self.mask is None:
            return self.image.to(x) if self.strength == 0 else codec.decode(x)
        return codec.compose(codec.decode(x), self.image, self.mask)

    def recipe(self) -> dict:
        return dict(self.record)


def image_hash(image: Image.Image) -> str:
    return hashlib.sha256(np.asarray(image.convert("RGBA")).tobytes() + repr(image.size).encode()).hexdigest()[:16]


def open_image(path, what: str = "image") -> Image.Image:
    """Read an image file to edit: its pixels are checked against ``input_pixels`` on the header,
    before decoding; an unreadable file is a ``ValueError`` naming it."""
    if not isinstance(path, (str, Path)):
        raise ValueError(f"{what} must be a path to an image file, got {type(path).__name__}")
    try:
        with limits.open_image(path, what) as image:
            image.load()
            return image.copy()
    except limits.LimitError:
        raise
    except (OSError, ValueError, SyntaxError) as error:
        raise ValueError(f"{what} {path}: cannot read it as an image ({error})") from None


def eight_bit(image: Image.Image, what: str = "image") -> Image.Image:
    """``image`` in an 8-bit mode: unchanged when it is one; 16-bit grayscale scaled by 1/257 (rounded)."""
    if image.mode in EIGHT_BIT_MODES:
        return image
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"{what} of mode {image.mode} holds values outside 0..65535 "
                             f"({values.min()}..{values.max()}); save it as an 8- or 16-bit image")
        return Image.fromarray(((values + 128) // 257).astype(np.uint8), "L")  # round(v / 257): 65535 -> 255
    raise ValueError(f"{what} has mode {image.mode!r}, which difflab does not read: save it as 8-bit RGB, RGBA "
                     f"or grayscale (or 16-bit grayscale)")


def _check_input(image, what: str) -> None:
    if not isinstance(image, Image.Image):
        raise ValueError(f"{what} must be a PIL image, got {type(image).__name__}")
    limits.check("input_pixels", image.width * image.height,
                 f"{what}: pixels of the input image ({image.width}x{image.height})")


def prepare(codec, size_multiple: int, image, strength, mask, outpaint, mask_blur, batch: int) -> Edit | None:
    """Check an edit's inputs (and the output size against the limits) before building anything."""
    if image is None:
        if mask is not None or strength is not None or outpaint is not None:
            raise ValueError("strength, mask and outpaint edit an input image: pass image= too")
        return None
    _check_input(image, "image")
    modes = [name for name, value in (("mask", mask), ("outpaint", outpaint)) if value is not None]
    if len(modes) > 1:
        raise ValueError("choose one edit: mask (inpainting) or outpaint, not both")
    if not isinstance(mask_blur, (int, float)) or isinstance(mask_blur, bool) or mask_blur < 0:
        raise ValueError(f"mask_blur must be a number >= 0 (pixels), got {mask_blur!r}")
    size, what = image.size, f"the input image sets the output size {image.width}x{image.height}"
    if outpaint is not None:
        size = _outpaint_size(image.size, outpaint)
        what = f"outpaint {tuple(outpaint)} makes a {size[0]}x{size[1]} image"
    elif mask is not None:
        _check_input(mask, "mask")
        if mask.size != image.size:
            raise ValueError(f"mask size {mask.size} differs from image size {image.size}; they must match")
    if strength is None:
        strength = 1.0 if mask is not None or outpaint is not None or codec.media == "video" else 0.75
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise ValueError(f"strength must be a number in [0, 1], got {strength!r}")
    _check_size(size, size_multiple)
    limits.check_sample_shape(codec.model_shape(batch, *size), what)
    image = eight_bit(image, "image")
    record = {"image": image_hash(image)}
    if outpaint is not None:
        image, mask = _outpaint_canvas(image, outpaint)
        record["outpaint"] = list(outpaint)
    elif mask is not None:
        mask = eight_bit(mask, "mask")
        record["mask"] = image_hash(mask)
    tensor = to_tensor(image, codec.channels).expand(batch, -1, -1, -1)
    mask_tensor = None if mask is None else _mask_tensor(mask, mask_blur)
    if codec.media == "video":
        return _first_frame(codec, tensor, strength, mask_tensor, image.size, record)
    record.update(strength=strength, mask_blur=mask_blur)
    return Edit(tensor, float(strength), mask_tensor, image.size, record)


def _first_frame(codec, image: torch.Tensor, strength, mask, size, record) -> Edit:
    """Image-to-video: the image is the clip's first frame, kept exactly; the rest is generated.

    Inpainting with a mask in time (regenerate every frame but the first), so it runs with every
    sampler: the first frame is re-noised to each step's level, and the later frames are denoised
    in its presence, which the temporal layers read (the "reconstruction guidance"-free
    replacement method of Ho et al. 2022, Video Diffusion Models, Sec. 3.1)."""
    if mask is not None or "outpaint" in record or strength != 1.0:
        raise ValueError("a video model takes image= as the first frame only (image-to-video): no mask, "
                         "outpaint or strength")
    frames = image[:, :, None].expand(-1, -1, codec.frames, -1, -1)              # [B, C, T, H, W]
    time_mask = torch.ones(1, 1, codec.frames, *image.shape[-2:])
    time_mask[:, :, 0] = 0                                                     # 0 = keep: the given frame
    record.update(first_frame=True, strength=1.0, mask_blur=0.0)
    return Edit(frames, 1.0, time_mask, size, record)


def check_replay_inputs(recipe: dict, image, mask) -> None:
    for key, given in (("image", image), ("mask", mask)):
        if recipe.get(key) and given is None:
            raise ValueError(f"this recipe edits an input {key} ({recipe[key]}): pass it again to replay")
        if recipe.get(key):
            _check_input(given, key)
        if recipe.get(key) and image_hash(eight_bit(given, key)) != recipe[key]:
            raise ValueError(f"the given {key} is not the one in the recipe (hash {recipe[key]})")


def output_size(edits: Edit | None, width, height, resolution: int, multiple: int) -> tuple[int, int]:
    """The output's (width, height): an edit's canvas, else ``width`` x ``height`` (None: the model's
    resolution), checked against the network's size multiple and the pixel limit."""
    for name, value in (("width", width), ("height", height)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer (pixels), got {value!r}"[:200])
    if edits is not None:
        if (width is not None and width != edits.size[0]) or (height is not None and height != edits.size[1]):
            raise ValueError(f"an edit's output size is set by its input image ({edits.size[0]}x{edits.size[1]});"
                             f" width/height {width}x{height} differ")
        return edits.size
    size = (width or resolution, height or resolution)
    _check_size(size, multiple)
    limits.check("pixels", size[0] * size[1], f"pixels of the output ({size[0]}x{size[1]})")
    return size


def _check_size(size: tuple[int, int], multiple: int) -> None:
    width, height = size
    if width % multiple or height % multiple or min(size) < multiple:
        raise ValueError(f"this model takes image sides that are multiples of {multiple}; got {width}x{height}")


def _outpaint_size(size: tuple[int, int], outpaint) -> tuple[int, int]:
    """The canvas (width, height) of an outpaint, computed (and checked) without building it."""
    if not (isinstance(outpaint, (list, tuple)) and len(outpaint) == 4
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in outpaint) and any(outpaint)):
        raise ValueError(f"outpaint must be (left, right, top, bottom) non-negative pixel counts, not all 0; "
                         f"got {outpaint!r}"[:300])
    left, right, top, bottom = outpaint
    return size[0] + left + right, size[1] + top + bottom


def _outpaint_canvas(image: Image.Image, outpaint):
    left, right, top, bottom = outpaint
    width, height = _outpaint_size(image.size, outpaint)
    canvas = Image.new(image.mode, (width, height))
    canvas.paste(image, (left, top))
    mask = Image.new("L", (width, height), 255)
    mask.paste(0, (left, top, left + image.size[0], top + image.size[1]))
    return canvas, mask


def _mask_tensor(mask: Image.Image, blur: float) -> torch.Tensor:
    """Binary mask (> half grey = regenerate), feathered inward only: the kept pixels stay exact."""
    hard = mask.convert("L").point(lambda v: 255 if v > 127 else 0)
    soft = hard.filter(ImageFilter.GaussianBlur(blur)) if blur else hard
    hard_t = torch.from_numpy(np.asarray(hard, dtype=np.float32) / 255)
    soft_t = torch.from_numpy(np.asarray(soft, dtype=np.float32) / 255)
    return (hard_t * soft_t)[None, None]
