"""Training: ``train(config, out)`` on Accelerate, with presets, checkpoints that resume exactly, EMA.

The trainer is imported on first use, so the configuration (and the command line's checks of it)
needs no torch.
"""

from __future__ import annotations

import importlib

from difflab.train.config import PRESETS, TrainConfig, build_config, preset

_TRAINER_NAMES = ("Trainer", "TrainingStopped", "train")

__all__ = ["PRESETS", "TrainConfig", "Trainer", "TrainingStopped", "build_config", "preset", "train"]


def __getattr__(name: str):
    if name in _TRAINER_NAMES:
        return getattr(importlib.import_module("difflab.train.trainer"), name)
    raise AttributeError(f"module 'difflab.train' has no attribute {name!r}")
