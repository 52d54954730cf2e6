"""Model packages: a folder that holds one network, safely loadable on any machine.

Format (``format_version`` 1)::

    folder/
      config.json        {"format_version": 1,
                          "class_name": "UNet",            # a registered class: UNet, DiT, AutoencoderKL
                          "config": {...},                 # the model's config dataclass, field by field
                          "diffusion": {...}, "data": {...}, ...}   # optional sections, kept verbatim
      model.safetensors  the weights (state_dict names), float tensors
      ema.safetensors    optional: EMA weights with the same names and shapes

Loading is strict and never runs code from the folder: only safetensors are read (a package whose
weights are a pickle file -- .bin, .pt, .pth, .ckpt, .pkl -- is refused without opening it);
a missing, extra or mis-shaped tensor, a NaN or infinite value, a truncated file, an unknown
``format_version``, ``class_name`` or config field is an error naming the problem. The network's
size is counted from ``config.json`` on the ``meta`` device (no memory) before it is built, and a
network above :mod:`difflab.limits` (``network_bytes``, ``network_modules``) is refused. Nothing is
downloaded. Saving writes a temporary folder beside the target and renames it into place, so a
crash never leaves a half-written package.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from difflab import limits
# Re-exported: the registry and the config helpers lived here before models/registry.py held them.
from difflab.models.registry import (MODEL_CLASSES, _to_tuples, config_from_dict, create_model,  # noqa: F401
                                     known_models, model_class, register_model)

FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, EMA_FILE = "config.json", "model.safetensors", "ema.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
RESERVED_SECTIONS = ("format_version", "class_name", "config")


@dataclass
class ModelPackage:
    """A loaded package: the model, its extra sections, and access to the optional EMA weights."""

    model: nn.Module
    metadata: dict
    folder: Path

    @property
    def has_ema(self) -> bool:
        return (self.folder / EMA_FILE).is_file()

    def ema_state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA weights, checked as strictly as the model's."""
        if not self.has_ema:
            raise FileNotFoundError(f"{self.folder} has no {EMA_FILE}")
        return read_weights(self.folder / EMA_FILE, self.model)

    def ema_model(self) -> nn.Module:
        """A new model of the same config with the EMA weights loaded."""
        model = type(self.model)(config=self.model.config)
        model.load_state_dict(self.ema_state_dict(), strict=True)
        return model.eval()


def _json_ready(metadata: dict | None) -> dict:
    metadata = dict(metadata or {})
    clash = [k for k in metadata if k in RESERVED_SECTIONS]
    if clash:
        raise ValueError(f"metadata may not use the reserved section name(s) {clash}; "
                         f"reserved: {list(RESERVED_SECTIONS)}")
    try:
        json.dumps(metadata)
    except TypeError as e:
        raise ValueError(f"metadata must be JSON-serialisable (dicts, lists, strings, numbers): {e}") from None
    return metadata


def _state_to_save(state: dict) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_package(model: nn.Module, folder, metadata=None, ema_state_dict=None) -> Path:
    """Write ``model`` as a package at ``folder``, atomically (see :meth:`ModelMixin.save_pretrained`)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if type(model).__name__ not in MODEL_CLASSES:
        raise ValueError(f"{type(model).__name__} is not a registered model class; known: {sorted(MODEL_CLASSES)}")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir()) and not (folder / CONFIG_FILE).is_file()):
        raise FileExistsError(f"{folder} exists and is not a model package; refusing to overwrite it")
    header = {"format_version": FORMAT_VERSION, "class_name": type(model).__name__,
              "config": dataclasses.asdict(model.config), **_json_ready(metadata)}
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        (tmp / CONFIG_FILE).write_text(json.dumps(header, indent=2) + "\n")
        save_file(_state_to_save(model.state_dict()), tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        if ema_state_dict is not None:
            check_state(ema_state_dict, model, "ema_state_dict")
            save_file(_state_to_save(ema_state_dict), tmp / EMA_FILE, metadata={"format": "pt"})
        _permissions_from_umask(tmp)
        old = folder.with_name(f".{folder.name}.old-{tmp.name[-8:]}")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _permissions_from_umask(folder: Path) -> None:
    """Give a package the permissions of an ordinary folder and files (``mkdtemp`` and the
    safetensors writer create them private to the owner)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.iterdir():
        os.chmod(path, 0o666 & ~umask)


def _check_complete(path: Path) -> None:
    """Refuse a safetensors file whose size disagrees with its header (truncated or padded)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path} is truncated: {size} bytes, too short for a safetensors header")
        n = struct.unpack("<Q", raw)[0]
        if n > size - 8:
            raise ValueError(f"{path} is truncated: its header claims {n} bytes but the file has {size}")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise ValueError(f"{path} has a corrupt safetensors header (not valid JSON)") from None
    end = max((_data_end(path, k, v) for k, v in _header_entries(path, header)), default=0)
    if size != 8 + n + end:
        raise ValueError(f"{path} is truncated or corrupt: the header describes {8 + n + end} bytes, "
                         f"the file has {size}")


def _header_entries(path: Path, header) -> list:
    if not isinstance(header, dict):
        raise ValueError(f"{path} has a corrupt safetensors header: a JSON {type(header).__name__}, "
                         f"not an object of tensors")
    return [(k, v) for k, v in header.items() if k != "__metadata__"]


def _data_end(path: Path, name: str, entry) -> int:
    """Where tensor ``name``'s bytes end, from its ``data_offsets`` [begin, end]."""
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and o >= 0 for o in offsets)):
        raise ValueError(f"{path} has a corrupt safetensors header: tensor {name!r} lacks valid 'data_offsets' "
                         f"[begin, end]")
    return offsets[1]


def check_state(state: dict, model: nn.Module, what: str) -> None:
    """Names, shapes, dtypes and finiteness of ``state`` against ``model``'s state_dict."""
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"{what} does not match {type(model).__name__}: missing tensors {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected tensors {extra[:8]}"
                         f"{' ...' if len(extra) > 8 else ''}")
    for name, ref in expected.items():
        t = state[name]
        if tuple(t.shape) != tuple(ref.shape):
            raise ValueError(f"{what}: tensor {name!r} has shape {list(t.shape)}, the model expects {list(ref.shape)}")
        if t.is_floating_point() != ref.is_floating_point():
            raise ValueError(f"{what}: tensor {name!r} has dtype {t.dtype}, the model expects {ref.dtype}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"{what}: tensor {name!r} contains NaN or infinite values")


def read_weights(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """Read and strictly check a safetensors file against ``model``."""
    from safetensors.torch import load_file

    _check_complete(path)
    try:
        state = load_file(path)
    except Exception as e:  # safetensors raises its own error types for corrupt data
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
    check_state(state, model, str(path))
    return state


def read_config(folder) -> dict:
    """The checked ``config.json`` of the package at ``folder`` (nothing else is read)."""
    return _read_header(Path(folder))


def _read_header(folder: Path) -> dict:
    if folder.is_file() and folder.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(f"refusing pickle file {folder}: pickles can run code when opened; "
                         f"difflab loads model packages (config.json + model.safetensors) only")
    if not folder.is_dir():
        raise FileNotFoundError(f"no model package at {folder} (expected a folder with {CONFIG_FILE} and "
                                f"{WEIGHTS_FILE}; nothing is downloaded)")
    if not (folder / WEIGHTS_FILE).is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        hint = f"; refusing pickle weights {pickles} (not opened): convert them to safetensors" if pickles else ""
        raise FileNotFoundError(f"{folder} has no {WEIGHTS_FILE}{hint}")
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE}")
    try:
        header = json.loads((folder / CONFIG_FILE).read_text())
    except ValueError as e:
        raise ValueError(f"{folder / CONFIG_FILE} is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{folder / CONFIG_FILE} must hold a JSON object")
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder / CONFIG_FILE}: unsupported format_version {header.get('format_version')!r}; "
                         f"this difflab reads format_version {FORMAT_VERSION}")
    if not isinstance(header.get("class_name"), str) or header["class_name"] not in known_models():
        raise ValueError(f"{folder / CONFIG_FILE}: unknown class_name {header.get('class_name')!r}; "
                         f"known: {known_models()}")
    if "config" not in header:
        raise ValueError(f"{folder / CONFIG_FILE} has no 'config' section")
    return header


def load_package(folder) -> ModelPackage:
    """Load a package strictly: the model (in eval mode), its metadata sections and EMA access."""
    folder = Path(folder)
    header = _read_header(folder)
    cls = model_class(header["class_name"])
    try:
        config = config_from_dict(cls.config_class, header["config"])
    except (TypeError, ValueError) as error:
        raise type(error)(f"{folder / CONFIG_FILE}: {error}") from None
    check_network_size(cls, config, folder / CONFIG_FILE)
    model = cls(config=config)
    model.load_state_dict(read_weights(folder / WEIGHTS_FILE, model), strict=True)
    metadata = {k: v for k, v in header.items() if k not in RESERVED_SECTIONS}
    return ModelPackage(model=model.eval(), metadata=metadata, folder=folder)


def check_network_size(cls: type, config, where) -> int:
    """Count the parameters of ``cls(config=config)`` without allocating them (built on the ``meta``
    device, stopped early past ``network_modules`` modules); refuse a network above the limits.
    Returns the parameter count."""
    counter = _ModuleCounter(limits.get().network_modules, f"{cls.__name__} of {where}")
    try:
        with counter, torch.device("meta"):
            model = cls(config=config)
    except limits.LimitError:
        raise
    except (ValueError, TypeError, ArithmeticError, IndexError, KeyError, RuntimeError) as error:
        raise ValueError(f"{where}: its 'config' cannot build a {cls.__name__}: {error}") from None
    count = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    limits.check("network_bytes", 4 * count, f"{cls.__name__} of {where}: float32 weights in bytes "
                                             f"({count:,} parameters, counted from the config before building)")
    return count


class _ModuleCounter:
    """Counts the submodules registered by this thread while active; past ``limit`` raises LimitError."""

    def __init__(self, limit: int, what: str):
        self.limit, self.what, self.count, self.thread = limit, what, 0, threading.get_ident()

    def __call__(self, module, name, submodule):
        if threading.get_ident() == self.thread:
            self.count += 1
            if self.count > self.limit:
                raise limits.LimitError(f"{self.what}: modules of the network: more than {self.limit:,} asked (counting "
                                        f"stopped there), the limit is {self.limit:,}; "
                                        f"{limits.how_to_raise('network_modules')}")

    def __enter__(self):
        self.handle = torch.nn.modules.module.register_module_module_registration_hook(self)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def load(folder) -> nn.Module:
    """Load the model of a package (see :func:`load_package` for metadata and EMA weights)."""
    return load_package(folder).model

