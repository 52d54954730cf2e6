"""difflab: diffusion models you can train, sample, edit and evaluate.

The top-level names are imported lazily, so ``import difflab`` (and the command line) starts fast
and a missing optional part never breaks the rest.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "NoiseSchedule": "difflab.schedules",
    "NoiseStreams": "difflab.noise",
    "Denoiser": "difflab.denoisers",
    "CFG": "difflab.guidance",
    "SAMPLERS": "difflab.samplers",
    "sample": "difflab.sampling",
    "Pipeline": "difflab.pipelines",
}
_SUBMODULES = {"samplers", "schedules", "noise", "denoisers", "sampling", "models", "data", "metrics",
               "train", "pipelines", "parameterization", "conditioning", "codecs", "guidance", "limits"}

__all__ = sorted(_EXPORTS) + sorted(_SUBMODULES)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"difflab.{name}")
    raise AttributeError(f"module 'difflab' has no attribute {name!r}")
