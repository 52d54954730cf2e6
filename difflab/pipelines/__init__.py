"""Pipelines: conditioner + codec + denoiser + sampler + recipe, from prompts to saved images.

``Pipeline`` (text-to-image and its edits) lives in :mod:`difflab.pipelines.image`; recipes and
results in :mod:`difflab.pipelines.recipes`; the edits' checks and masks in
:mod:`difflab.pipelines.edit`.
"""

from difflab.pipelines.image import BUNDLED_MODEL, DEFAULTS, Pipeline, sampling_defaults
from difflab.pipelines.recipes import RECIPE_KEY, Result, read_recipe, save_png, weights_hash

__all__ = ["Pipeline", "Result", "read_recipe", "save_png", "weights_hash", "sampling_defaults", "BUNDLED_MODEL",
           "DEFAULTS", "RECIPE_KEY"]
