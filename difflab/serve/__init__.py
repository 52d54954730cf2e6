"""``difflab serve``: a browser UI and a REST API over the pipelines (FastAPI + uvicorn).

:mod:`~difflab.serve.config` (settings, torch-free), :mod:`~difflab.serve.guard` (host, origin, size
and token checks), :mod:`~difflab.serve.requests` (a job's schema and checks), :mod:`~difflab.serve.jobs`
(bounded queue and worker), :mod:`~difflab.serve.store` (SQLite history), :mod:`~difflab.serve.app`
(routes), :mod:`~difflab.serve.server` (uvicorn). Names are imported lazily: the command line checks a
config without importing FastAPI or torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"ServeConfig": "config", "create_app": "app", "run": "server", "background_server": "server"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"difflab.serve.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'difflab.serve' has no attribute {name!r}")
