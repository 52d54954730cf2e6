"""What every difflab network shares; imports no network.

:class:`ModelMixin` gives a network with a frozen config dataclass its constructor convention
(``Net(field=...)`` or ``Net(config=NetConfig(...))``), ``save_pretrained`` / ``from_pretrained`` and
``num_parameters``. The registry (``register_model``, ``create_model``, ...) lives in
:mod:`difflab.models.registry` and is re-exported here; package I/O (:mod:`difflab.models.package`)
builds on the registry, not on this module, so the networks -> base -> package -> registry chain
has no circle.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from difflab.models.package import load, save_package
from difflab.models.registry import (BUILTIN_MODELS, MODEL_CLASSES, _to_tuples, config_from_dict,  # noqa: F401
                                     create_model, known_models, model_class, register_model)

def require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition``: config validation reads as a list of rules."""
    if not condition:
        raise ValueError(message)


def is_int(value, minimum: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_optional_int(value, minimum: int = 1) -> bool:
    return value is None or is_int(value, minimum)


class ModelMixin(nn.Module):
    """A network built from a frozen ``config``: ``Net(**fields)`` or ``Net(config=Net.config_class(...))``.

    A subclass sets ``config_class`` and builds its layers in :meth:`build`, which runs once
    ``self.config`` is set.
    """

    config_class: type

    def __init__(self, *args, config=None, **kwargs):
        super().__init__()
        self.config = config if config is not None else self.config_class(*args, **kwargs)
        self.build(self.config)

    def build(self, config) -> None:
        """Create the layers of ``config`` (the subclass's architecture)."""
        raise NotImplementedError

    def save_pretrained(self, folder, metadata: dict | None = None, ema_state_dict: dict | None = None) -> Path:
        """Write this model as a package (see :mod:`difflab.models.package`); returns the folder.

        ``metadata``: extra top-level sections ("diffusion", "conditioning", "data", "training"),
        stored verbatim. ``ema_state_dict``: optional EMA weights written to ema.safetensors.
        """
        return save_package(self, folder, metadata=metadata, ema_state_dict=ema_state_dict)

    @classmethod
    def from_pretrained(cls, folder):
        """Load a package whose ``class_name`` is this class (strictly; see :func:`difflab.models.load`)."""
        model = load(folder)
        if not isinstance(model, cls):
            raise ValueError(f"{folder} holds a {type(model).__name__}, not a {cls.__name__}; "
                             f"use difflab.models.load() to load any model class")
        return model

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class SideTraining(nn.Module):
    """The network a side network (a ControlNet, an IP-Adapter) trains in: a frozen base network and
    the trainable side network (``side``), whose input for the current batch (control images, image
    features) the trainer sets in ``control`` before each call."""

    side_name = "side"

    def __init__(self, unet: nn.Module, side: nn.Module):
        super().__init__()
        self.unet, self.control = unet.requires_grad_(False), None
        setattr(self, self.side_name, side)

    @property
    def side(self) -> nn.Module:
        return getattr(self, self.side_name)

    @property
    def num_parameters(self) -> int:
        """The trained parameters (the side network's)."""
        return sum(p.numel() for p in self.side.parameters())

    def side_input(self):
        if self.control is None:
            raise ValueError(f"{type(self).__name__}: set .control (the batch's {self.side_name} input) before calling it")
        return self.control
