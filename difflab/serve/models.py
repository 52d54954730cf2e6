"""The models a server offers: pipelines loaded once, by name, and what the API says about them."""

from __future__ import annotations

import threading
from pathlib import Path

_CACHE: dict = {}      # resolved package folder -> Pipeline, shared by the apps of one process
_CACHE_LOCK = threading.Lock()


def load_pipelines(folders: list) -> dict:
    """``{name: Pipeline}`` for package folders or bundled models' names (None: the default); names are the folders' names
    and must differ. Loaded once per process: a test suite's apps share them."""
    from difflab.pipelines import BUNDLED_MODEL, Pipeline
    from difflab.settings import package_folder
    pipelines = {}
    for folder in folders:
        path = (BUNDLED_MODEL if folder is None else package_folder(folder)).resolve()   # a bundled name too
        with _CACHE_LOCK:
            if path not in _CACHE:
                _CACHE[path] = Pipeline.from_pretrained(path)
        pipe = _CACHE[path]
        if pipe.name in pipelines:
            raise ValueError(f"two models are named {pipe.name!r} ({folder}); serve folders of different names")
        pipelines[pipe.name] = pipe
    return pipelines


def model_info(name: str, pipe) -> dict:
    """What ``GET /api/v1/models`` reports of one pipeline: what it makes (``media``: image, video or
    audio), sizes, defaults and example prompts."""
    return {"name": name, "media": pipe.codec.media, "resolution": pipe.resolution, "size_multiple": pipe.size_multiple,
            "channels": pipe.channels, "frames": getattr(pipe.codec, "frames", None), "defaults": dict(pipe.defaults),
            "examples": _examples(pipe)}


def _examples(pipe) -> list[str]:
    if pipe.conditioner.class_labels:
        return []
    if pipe.dataset == "shapes" or pipe.name == "shapes":
        from difflab.data.shapes import ShapesDataset
        return ["a red circle above a blue square", *ShapesDataset.preview_prompts, "three yellow triangles",
                "a large green circle on a white background"]
    from difflab.data import DATASETS, dataset_class
    if pipe.dataset in DATASETS:      # a video or audio world: its own preview prompts
        return list(getattr(dataset_class(pipe.dataset), "preview_prompts", ()))
    return []
