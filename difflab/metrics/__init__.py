"""Evaluation: the shapes adherence oracle, shapes-bench, FID and KID on chosen features.

    from difflab import metrics
    metrics.check(image, "a red circle to the left of a blue square")   # {"ok": ..., "requirements": [...]}
    metrics.fid(real_images, fake_images, dataset="shapes")              # difflab shape features
    metrics.kid(real_images, fake_images, dataset="digits")              # (mean, std)

Names are imported lazily so that ``import difflab.metrics`` stays light.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "check": "difflab.metrics.adherence",
    "fid": "difflab.metrics.fid",
    "kid": "difflab.metrics.fid",
    "feature_name": "difflab.metrics.fid",
    "bench_prompts": "difflab.metrics.bench",
    "evaluate": "difflab.metrics.evaluate",
    "EvalConfig": "difflab.metrics.evaluate",
    "oracle_rates": "difflab.metrics.oracle_eval",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'difflab.metrics' has no attribute {name!r}")
