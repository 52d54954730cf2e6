"""Pipelines: conditioner + codec + denoiser + sampler + recipe, from prompts to saved images.

``Pipeline`` (text-to-image and its edits) lives in :mod:`difflab.pipelines.image`; recipes and
results in :mod:`difflab.pipelines.recipes`; the edits' checks and masks in
:mod:`difflab.pipelines.edit`. Names are imported lazily, so reading a recipe (the command line
checks one before anything else) does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Pipeline": "image", "BUNDLED_MODEL": "image", "DEFAULTS": "packaging", "sampling_defaults": "packaging",
    "save_pipeline": "packaging", "cascade": "cascades", "base_of": "cascades",
    "Result": "recipes", "read_recipe": "recipes", "validate_recipe": "recipes", "save_png": "recipes",
    "weights_hash": "recipes", "RECIPE_KEY": "recipes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"difflab.pipelines.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'difflab.pipelines' has no attribute {name!r}")
