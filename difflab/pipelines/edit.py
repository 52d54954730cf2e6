"""Edits for the Pipeline: image-to-image, inpainting and outpainting, checked before any compute.

All three reduce to ``difflab.sample(image=, strength=, mask=)`` in model space (the codec encodes
the image and shrinks the mask), so they work with every sampler, every parameterization and every
codec (pixels or latents).
Outpainting pads the canvas by (left, right, top, bottom) pixels and inpaints the new border.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter

from difflab.data.images import to_tensor


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

    def recipe(self) -> dict:
        return dict(self.record)


def image_hash(image: Image.Image) -> str:
    return hashlib.sha256(np.asarray(image.convert("RGBA")).tobytes() + repr(image.size).encode()).hexdigest()[:16]


def prepare(codec, size_multiple: int, image, strength, mask, outpaint, mask_blur, batch: int) -> Edit | None:
    if image is None:
        if mask is not None or strength is not None or outpaint is not None:
            raise ValueError("strength, mask and outpaint edit an input image: pass image= too")
        return None
    if not isinstance(image, Image.Image):
        raise ValueError(f"image must be a PIL image, got {type(image).__name__}")
    modes = [name for name, value in (("mask", mask), ("outpaint", outpaint)) if value is not None]
    if len(modes) > 1:
        raise ValueError("choose one edit: mask (inpainting) or outpaint, not both")
    if not isinstance(mask_blur, (int, float)) or isinstance(mask_blur, bool) or mask_blur < 0:
        raise ValueError(f"mask_blur must be a number >= 0 (pixels), got {mask_blur!r}")
    record = {"image": image_hash(image)}
    if outpaint is not None:
        image, mask = _outpaint_canvas(image, outpaint)
        record["outpaint"] = list(outpaint)
    elif mask is not None:
        if not isinstance(mask, Image.Image):
            raise ValueError(f"mask must be a PIL image, got {type(mask).__name__}")
        if mask.size != image.size:
            raise ValueError(f"mask size {mask.size} differs from image size {image.size}; they must match")
        record["mask"] = image_hash(mask)
    if strength is None:
        strength = 1.0 if mask is not None else 0.75
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise ValueError(f"strength must be a number in [0, 1], got {strength!r}")
    _check_size(image.size, size_multiple)
    tensor = to_tensor(image, codec.channels).expand(batch, -1, -1, -1)
    mask_tensor = None if mask is None else _mask_tensor(mask, mask_blur)
    record.update(strength=strength, mask_blur=mask_blur)
    return Edit(tensor, float(strength), mask_tensor, image.size, record)


def check_replay_inputs(recipe: dict, image, mask) -> None:
    for key, given in (("image", image), ("mask", mask)):
        if recipe.get(key) and given is None:
            raise ValueError(f"this recipe edits an input {key} ({recipe[key]}): pass it again to replay")
        if recipe.get(key) and image_hash(given) != recipe[key]:
            raise ValueError(f"the given {key} is not the one in the recipe (hash {recipe[key]})")


def _check_size(size: tuple[int, int], multiple: int) -> None:
    width, height = size
    if width % multiple or height % multiple or min(size) < multiple:
        raise ValueError(f"this model takes image sides that are multiples of {multiple}; got {width}x{height}")


def _outpaint_canvas(image: Image.Image, outpaint):
    if not (isinstance(outpaint, (list, tuple)) and len(outpaint) == 4
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in outpaint) and any(outpaint)):
        raise ValueError(f"outpaint must be (left, right, top, bottom) non-negative pixel counts, not all 0; "
                         f"got {outpaint!r}")
    left, right, top, bottom = outpaint
    width, height = image.size[0] + left + right, image.size[1] + top + bottom
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
