"""Load k-diffusion's sampling module alone (its package __init__ imports torchvision and more)."""

from __future__ import annotations

import importlib.util
import sys
import types

import torch


def load_k_sampling():
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        raise ImportError("k-diffusion is a test dependency: pip install --no-deps k-diffusion==0.1.1.post1")
    package_dir = spec.submodule_search_locations[0]
    package = types.ModuleType("k_diffusion")
    package.__path__ = [package_dir]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    package.utils = utils
    saved = {k: sys.modules.get(k) for k in ("k_diffusion", "k_diffusion.utils", "k_diffusion.sampling")}
    sys.modules.update({"k_diffusion": package, "k_diffusion.utils": utils})
    try:
        sampling_spec = importlib.util.spec_from_file_location("k_diffusion.sampling", f"{package_dir}/sampling.py")
        module = importlib.util.module_from_spec(sampling_spec)
        sampling_spec.loader.exec_module(module)
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value
    return module
