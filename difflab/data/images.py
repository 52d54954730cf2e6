"""The one conversion between PIL images and the tensors models see: pixels ``v`` in 0..255 <-> ``v / 127.5 - 1``.

    to_tensor(images, channels=3)  PIL image(s) -> float (N, C, H, W) in [-1, 1]
    to_images(x)                   float (N, C, H, W) in [-1, 1] -> PIL images (rounded, clipped)
    to_uint8(images, channels=3)   PIL image(s) -> uint8 (N, C, H, W), the pixels as stored
    from_uint8(pixels)             uint8 (N, C, H, W) -> float in [-1, 1]

``to_images(to_tensor(images))`` gives the images back exactly. Tensors keep the memory layout of the
decoded pixels (channels last), as the network's first convolution wants them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:   # torch is imported where a tensor is made: the CLI's refusals and the oracle run without it
    import torch

CHANNEL_MODES = {1: "L", 3: "RGB"}


def to_uint8(images, channels: int = 3) -> torch.Tensor:
    """PIL images (or one) -> uint8 tensor (N, channels, H, W), a view of (N, H, W, C) memory."""
    if channels not in CHANNEL_MODES:
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    images = [images] if isinstance(images, Image.Image) else list(images)
    if not images or not all(isinstance(im, Image.Image) for im in images):
        raise ValueError("expected a PIL image or a non-empty list of PIL images")
    sizes = {im.size for im in images}
    if len(sizes) != 1:
        raise ValueError(f"all images must have one size, got {sorted(sizes)}")
    import torch

    mode = CHANNEL_MODES[channels]
    arrays = np.stack([np.asarray(im.convert(mode), dtype=np.uint8).reshape(im.height, im.width, channels)
                       for im in images])                                       # (N, H, W, C)
    return torch.from_numpy(arrays).permute(0, 3, 1, 2)                        # (N, C, H, W)


def from_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1]: ``v / 127.5 - 1``."""
    return pixels.float() / 127.5 - 1.0


def to_tensor(images, channels: int = 3) -> torch.Tensor:
    """PIL images (or one) -> float tensor (N, channels, H, W) in [-1, 1]; channels is 1 or 3."""
    return from_uint8(to_uint8(images, channels))


def to_unit_tensor(images, channels: int = 3) -> torch.Tensor:
    """PIL images (or one) -> float tensor (N, channels, H, W) in [0, 1]: a ControlNet's control images."""
    return to_uint8(images, channels).float() / 255


def to_images(x: torch.Tensor) -> list[Image.Image]:
    """Float tensor (N, C, H, W) in [-1, 1] (C = 1 or 3) -> PIL images; values outside are clipped.

    A non-finite value is an error (a model that diverged), never a black or white pixel.
    """
    import torch

    if x.ndim != 4 or x.shape[1] not in CHANNEL_MODES:
        raise ValueError(f"expected a tensor of shape (N, 1 or 3, H, W), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise FloatingPointError("the model produced non-finite values; no image was written")
    pixels = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (N, C, H, W)
    arrays = pixels.permute(0, 2, 3, 1).numpy()                                            # (N, H, W, C)
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arrays]


def to_array(image) -> np.ndarray:
    """PIL image (any mode) or HxWx3 uint8 array -> float HxWx3 in [0, 1]."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] < 8 or array.shape[1] < 8:
        raise ValueError(f"image must be RGB (H x W x 3, at least 8 x 8), got shape {array.shape}")
    return array.astype(np.float64) / (255.0 if array.dtype == np.uint8 else 1.0)
