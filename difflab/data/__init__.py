"""Data that needs no download: the shapes world, moving shapes (video), sounds (audio),
scikit-learn's digits, any image folder.

Every dataset is a sequence of dicts with at least ``"image"`` (a PIL image) and ``"caption"`` (a
string, possibly empty); shapes items add ``"prompt"`` and ``"scene"``, digits items ``"label"``,
folder items ``"path"``; moving-shapes items hold ``"video"`` (uint8 ``[T, H, W, 3]``) and sounds items
``"audio"`` (a waveform) instead of ``"image"``. A dataset says what it holds: ``channels`` (1 or 3),
``num_classes`` (None, or the number of class labels its items carry in ``"label"``) and ``media``
(``image`` when absent, ``video``, ``audio``), so a trainer needs no dataset names. :data:`DATASETS` is the one table of dataset names; :func:`load_dataset` builds one.
``to_tensor`` / ``to_images`` (:mod:`difflab.data.images`) convert between images and the ``[-1, 1]``
tensors models use.
"""

from __future__ import annotations

import importlib
from pathlib import Path

_IMAGE_HELPERS = ("from_uint8", "to_images", "to_tensor", "to_uint8")  # from difflab.data.images, lazily

# name -> "module:class"; imported on first use, so ``import difflab.data`` stays light.
DATASETS = {
    "shapes": "difflab.data.shapes:ShapesDataset",
    "digits": "difflab.data.digits:DigitsDataset",
    "folder": "difflab.data.folder:ImageFolderDataset",
    "moving-shapes": "difflab.data.moving_shapes:MovingShapesDataset",
    "sounds": "difflab.data.sounds:SoundsDataset",
}

__all__ = ["DATASETS", "dataset_class", "load_dataset", "to_tensor", "to_images", "to_uint8", "from_uint8"]


def dataset_class(name: str) -> type:
    """The class of the dataset called ``name`` (a key of :data:`DATASETS`)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    module, _, cls = DATASETS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def load_dataset(name: str, split: str = "train", resolution: int | None = None, data_dir=None, **options):
    """A dataset by name (a key of :data:`DATASETS`; ``folder`` with ``data_dir``), or an image folder's path.

    ``split`` selects the procedural worlds' and digits' fixed splits; an image folder is one set and
    ignores it. ``resolution`` None: the dataset's own default (32 for images, 64 mel bands for sounds).
    """
    if resolution is not None:
        options["resolution"] = resolution
    if name not in DATASETS and isinstance(name, (str, Path)) and Path(name).is_dir():
        name, data_dir = "folder", name
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)} or the path of an image folder")
    if name == "folder":
        if data_dir is None:
            raise ValueError("the folder dataset needs data_dir, the folder that holds the images")
        return dataset_class(name)(data_dir, **{"resolution": 32, **options})
    return dataset_class(name)(split, **options)


def __getattr__(name: str):
    """The image helpers, imported on first use: ``import difflab.data`` needs no torch."""
    if name in _IMAGE_HELPERS:
        return getattr(importlib.import_module("difflab.data.images"), name)
    raise AttributeError(f"module 'difflab.data' has no attribute {name!r}")
