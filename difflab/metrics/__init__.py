"""Evaluation: the shapes adherence oracle, shapes-bench, FID and KID on chosen features.

    from difflab import metrics
    metrics.check(image, "a red circle to the left of a blue square")   # {"ok": ..., "requirements": [...]}
    metrics.fid(real_images, fake_images, dataset="shapes")              # difflab shape features
    metrics.kid(real_images, fake_images, dataset="digits")              # (mean, std)

Names are imported lazily so that ``import difflab.metrics`` stays light. No exported name is also
the name of a submodule (FID and KID live in ``distances``, the eval command in ``evaluation``):
importing a submodule binds its name on the package, which would shadow a function of that name.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "check": "difflab.metrics.adherence",
    "fid": "difflab.metrics.distances",
    "kid": "difflab.metrics.distances",
    "feature_name": "difflab.metrics.distances",
    "bench_prompts": "difflab.metrics.bench",
    "evaluate": "difflab.metrics.evaluation",
    "EvalConfig": "difflab.metrics.evaluation",
    "oracle_rates": "difflab.metrics.oracle_eval",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'difflab.metrics' has no attribute {name!r}")
