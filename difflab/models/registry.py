"""The registry that names difflab's networks, and the config helpers it builds them with.

A network declares itself with ``@register_model``; the built-in ones are listed by module in
:data:`BUILTIN_MODELS` and imported the first time their name is looked up, so neither this module
nor package I/O imports a network.

    create_model("DiT", in_channels=4, patch_size=2, depth=12)   # any registered class, by name
"""

from __future__ import annotations

import dataclasses
import importlib

from torch import nn

# Built-in model classes -> the module that defines (and registers) them, imported on first use.
BUILTIN_MODELS = {"UNet": "difflab.models.unet", "DiT": "difflab.models.dit",
                  "AutoencoderKL": "difflab.models.vae", "SDUNet": "difflab.models.sd_unet", "MMDiT": "difflab.models.mmdit",
                  "VideoUNet": "difflab.models.video_unet",
                  "VideoMMDiT": "difflab.models.video_mmdit", "ControlNet": "difflab.models.controlnet",
                  "SDControlNet": "difflab.models.sd_controlnet", "IPAdapter": "difflab.models.ip_adapter"}
MODEL_CLASSES: dict[str, type] = {}


def register_model(cls: type) -> type:
    """Class decorator: make ``cls`` loadable by its name from a package's ``class_name``."""
    MODEL_CLASSES[cls.__name__] = cls
    return cls


def known_models() -> list[str]:
    """Every class name :func:`model_class` resolves: the registered ones and the built-in ones."""
    return sorted(set(MODEL_CLASSES) | set(BUILTIN_MODELS))


def model_class(name: str) -> type:
    """The registered model class called ``name``, importing a built-in one on first use."""
    if isinstance(name, str) and name not in MODEL_CLASSES and name in BUILTIN_MODELS:
        importlib.import_module(BUILTIN_MODELS[name])                  # registers the class
    if not isinstance(name, str) or name not in MODEL_CLASSES:
        raise ValueError(f"unknown model class {name!r}; known: {known_models()}")
    return MODEL_CLASSES[name]


def create_model(class_name: str, **config_fields) -> nn.Module:
    """A new model of a registered class from its config fields (unknown or missing ones are errors)."""
    cls = model_class(class_name)
    return cls(config=config_from_dict(cls.config_class, config_fields))


def _to_tuples(value):
    """JSON lists back to the tuples a frozen config holds."""
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


def config_from_dict(config_class: type, values: dict):
    """Build ``config_class`` from a dict, refusing unknown or missing fields by name."""
    if not isinstance(values, dict):
        raise ValueError(f"the 'config' section must be a JSON object, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} field(s) {unknown}; allowed: {sorted(fields)}")
    required = [n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in values]
    if missing:
        raise ValueError(f"{config_class.__name__} is missing required field(s) {missing}")
    return config_class(**{k: _to_tuples(v) for k, v in values.items()})
