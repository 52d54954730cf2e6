"""Data that needs no download: the shapes world, scikit-learn's digits, any image folder.

Every dataset is a sequence of dicts with at least ``"image"`` (a PIL image) and ``"caption"`` (a
string, possibly empty); shapes items add ``"prompt"`` and ``"scene"``, digits items ``"label"``,
folder items ``"path"``. ``to_tensor`` turns a batch of images into the ``[-1, 1]`` tensors models use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

DATASETS = ("shapes", "digits")


def load_dataset(name: str, split: str = "train", resolution: int = 32, **options):
    """``shapes`` | ``digits`` | a path to an image folder -> a dataset of dict items."""
    if name == "shapes":
        from difflab.data.shapes import ShapesDataset

        return ShapesDataset(split, resolution, **options)
    if name == "digits":
        from difflab.data.digits import DigitsDataset

        return DigitsDataset(split, resolution, **options)
    if Path(name).is_dir():
        from difflab.data.folder import ImageFolderDataset

        return ImageFolderDataset(name, resolution, **options)
    raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)} or the path of an image folder")


def to_tensor(images, channels: int = 3) -> torch.Tensor:
    """PIL images (or one) -> float tensor (N, channels, H, W) in [-1, 1]; channels is 1 or 3."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    images = [images] if isinstance(images, Image.Image) else list(images)
    if not images or not all(isinstance(im, Image.Image) for im in images):
        raise ValueError("to_tensor expects a non-empty list of PIL images")
    mode = "L" if channels == 1 else "RGB"
    arrays = np.stack([np.asarray(im.convert(mode), dtype=np.float32).reshape(im.height, im.width, channels)
                       for im in images])  # (N, H, W, C); stacking refuses mixed sizes
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1.0


def to_images(x: torch.Tensor) -> list[Image.Image]:
    """Float tensor (N, C, H, W) in [-1, 1] (C = 1 or 3) -> PIL images; values outside are clipped."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected a tensor of shape (N, 1 or 3, H, W), got {tuple(x.shape)}")
    arrays = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    return [Image.fromarray(a.numpy().squeeze(-1) if x.shape[1] == 1 else a.numpy()) for a in arrays]
