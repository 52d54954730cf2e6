"""LoRA files loaded onto difflab's Stable Diffusion UNet and its own UNet through peft (no layers written here).

    name = load_lora(pipe.model, "style.safetensors", scale=0.8)    # or pipe.load_lora(...)
    unload_lora(pipe.model, name)                                   # None: every LoRA

Each file becomes one named peft adapter (``peft.inject_adapter_in_model`` with a ``LoraConfig``
whose targets are difflab module names and whose rank and alpha are given per module), so several
combine, each with its own scale, and one can be removed. The file's module names (diffusers' or
the original layout's, dotted or kohya-flattened; see :mod:`difflab.adapters.lora_files`) map to
SDUNet's through :func:`difflab.convert.diffusers_unet.module_table`, the table the weights
themselves load through; a LoRA trained here (:mod:`difflab.adapters.lora_train`) names difflab
UNet modules as they are.

Strict, as the weight loaders are: a file is refused when any of its modules has no place in the
network (before anything is injected; the message names the first unmatched keys, and says when
none matched: the common "LoRA does nothing" case), and when a matrix's shape does not fit its
layer (the adapter is then removed again).

``fuse_lora`` merges the active adapters into the weights (peft's ``merge``), ``unfuse_lora`` takes
them out again (equal to the unfused weights up to float rounding). Removing a LoRA restores the
original modules themselves, so the network is then exactly the one before loading.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from difflab.adapters.lora_files import LoraModule, file_hash, read_lora_file, resolve_path, rslora
from difflab.convert.diffusers_unet import module_table
from difflab.models.base import require
from difflab.adapters.lora_train import lora_targets
from difflab.models.sd_unet import SDUNet
from difflab.models.unet import UNet

MAX_SCALE = 10.0
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class LoadedLora:
    """What a recipe records of a loaded LoRA."""

    name: str
    path: str
    sha256: str
    scale: float
    modules: tuple[str, ...]                 # SDUNet module names it adapts


def load_lora(model: nn.Module, path, scale: float = 1.0, name: str | None = None) -> str:
    """Load a LoRA file onto the SDUNet inside ``model`` as adapter ``name`` (default: the file's
    stem, or a folder's name) at ``scale``; returns the name. Refused with one line naming the
    problem, the network left as it was: a file whose keys match nothing in the network, or match
    only in part (partial files are refused too; the first unmatched keys are listed), a shape that
    does not fit, a name already loaded, a scale outside [-10, 10], or loading while LoRAs are fused
    (``unfuse_lora`` first)."""
    unet = find_unet(model)
    stem = Path(path).name if Path(path).is_dir() else Path(path).stem      # a folder: its name
    path = resolve_path(path)
    name = _check_name(unet, re.sub(r"[^A-Za-z0-9_-]", "_", stem)[:64] if name is None else name)
    scale = check_scale(scale)
    require(not _fused(unet), "LoRAs are fused into the weights: unfuse_lora() before loading another")
    modules, metadata = read_lora_file(path)
    targets = _match(unet, modules, path)                             # SDUNet name -> LoraModule
    requires_grad = {p: p.requires_grad for p in unet.parameters()}  # peft freezes the base; keep it as it was
    with warnings.catch_warnings():                                  # several adapters are the point here
        warnings.filterwarnings("ignore", "Already found a `peft_config` attribute")
        inject_adapter_in_model(_config(targets, metadata), unet, adapter_name=name)
    for parameter, flag in requires_grad.items():
        parameter.requires_grad_(flag)
    layers = dict(unet.named_modules())
    try:
        with torch.no_grad():
            for ours, module in targets.items():
                _fill(layers[ours], name, module, path)
    except ValueError:
        _delete_adapter(unet, name)                                  # leave the network as it was
        raise
    _loras(unet)[name] = LoadedLora(name, str(path), file_hash(path), scale, tuple(targets))
    _activate(unet)
    return name


def unload_lora(model: nn.Module, name: str | None = None) -> None:
    """Remove LoRA ``name`` (None: all); a layer left with no adapter gets its original module back."""
    unet = find_unet(model)
    loras = _loras(unet)
    names = list(loras) if name is None else [name]
    for n in names:
        require(n in loras, f"no LoRA named {n!r} is loaded (loaded: {sorted(loras)})")
    if _fused(unet):
        unfuse_lora(model)
    for n in names:
        _delete_adapter(unet, n)
        del loras[n]
    _activate(unet)


def _delete_adapter(unet: SDUNet, name: str) -> None:
    """Delete peft adapter ``name`` from every layer; a layer left with none becomes its base module again."""
    for full_name, layer in _lora_layers(unet).items():
        if name in layer.lora_A:
            layer.delete_adapter(name)
        if not layer.lora_A:
            parent, _, child = full_name.rpartition(".")
            setattr(unet.get_submodule(parent) if parent else unet, child, layer.get_base_layer())
    configs = getattr(unet, "peft_config", {})                       # written by inject_adapter_in_model
    configs.pop(name, None)
    if not configs and hasattr(unet, "peft_config"):
        del unet.peft_config


def set_lora_scale(model: nn.Module, name: str, scale: float) -> None:
    """Change the scale of a loaded LoRA (refused while fused)."""
    unet = find_unet(model)
    loras = _loras(unet)
    require(name in loras, f"no LoRA named {name!r} is loaded (loaded: {sorted(loras)})")
    require(not _fused(unet), "LoRAs are fused into the weights: unfuse_lora() before changing a scale")
    loras[name].scale = check_scale(scale)
    _activate(unet)


def fuse_lora(model: nn.Module) -> None:
    """Merge every loaded LoRA, at its scale, into the weights (faster sampling; peft's ``merge``)."""
    unet = find_unet(model)
    require(_loras(unet), "no LoRA is loaded: nothing to fuse")
    for layer in _lora_layers(unet).values():
        layer.merge(adapter_names=[n for n in _loras(unet) if n in layer.lora_A])


def unfuse_lora(model: nn.Module) -> None:
    """Take fused LoRAs out of the weights again (up to float rounding); they stay loaded."""
    for layer in _lora_layers(find_unet(model)).values():
        layer.unmerge()


def loaded_loras(model: nn.Module) -> list[LoadedLora]:
    """The LoRAs loaded on the network, in loading order."""
    unet = next((m for m in model.modules() if isinstance(m, (SDUNet, UNet))), None)
    return [] if unet is None else list(_loras(unet).values())


def find_unet(model: nn.Module) -> nn.Module:
    """The network a LoRA adapts: a Stable Diffusion UNet (SDUNet) or difflab's own UNet (VideoUNet too)."""
    unet = next((m for m in model.modules() if isinstance(m, (SDUNet, UNet))), None)
    require(unet is not None, f"LoRA files load onto Stable Diffusion UNets and difflab's UNet; this network is a "
                              f"{type(model).__name__}")
    return unet


def check_scale(scale) -> float:
    ok = isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale)
    require(ok and abs(scale) <= MAX_SCALE, f"LoRA scale must be a number in [-{MAX_SCALE:g}, {MAX_SCALE:g}], "
                                            f"got {scale!r}")
    return float(scale)


def _check_name(unet: SDUNet, name) -> str:
    require(isinstance(name, str) and bool(_NAME.match(name)),
            f"LoRA name must be 1-64 letters, digits, '_' or '-', got {name!r}")
    require(name not in _loras(unet), f"a LoRA named {name!r} is already loaded; unload_lora({name!r}) first "
                                      f"or pass another name=")
    return name


def _loras(unet: SDUNet) -> dict[str, LoadedLora]:
    if not hasattr(unet, "_difflab_loras"):
        unet._difflab_loras = {}
    return unet._difflab_loras


def _lora_layers(unet: SDUNet) -> dict[str, LoraLayer]:
    return {n: m for n, m in unet.named_modules() if isinstance(m, LoraLayer)}


def _fused(unet: SDUNet) -> bool:
    return any(layer.merged for layer in _lora_layers(unet).values())


def _activate(unet: SDUNet) -> None:
    """Every loaded LoRA active in every layer it adapts, each at its own scale."""
    loras = _loras(unet)
    for layer in _lora_layers(unet).values():
        layer.set_adapter([n for n in loras if n in layer.lora_A], inference_mode=True)
        for n, lora in loras.items():
            layer.set_scale(n, lora.scale)


def _foreign_names(unet: SDUNet) -> dict[str, str]:
    """Every name a file may give an SDUNet module -> its SDUNet name: diffusers' and the original
    layout's, dotted and kohya-flattened ("." as "_")."""
    present = {n for n, _ in unet.named_modules()}
    if isinstance(unet, UNet):       # difflab's own: files name its modules as they are (lora_train.lora_targets)
        return {form: n for n in lora_targets(unet) for form in (n, n.replace(".", "_"))}
    names = {}
    for ours, foreign in module_table(unet.config).items():
        if ours in present:
            for theirs in foreign:
                names[theirs] = names[theirs.replace(".", "_")] = ours
    return names


def _match(unet: SDUNet, modules: list[LoraModule], path: Path) -> dict[str, LoraModule]:
    names = _foreign_names(unet)
    unmatched = [m for m in modules if m.name not in names]
    if unmatched:
        keys = [k for m in unmatched for k in m.keys][:5]
        what = "none of its keys match" if len(unmatched) == len(modules) else \
            f"{len(unmatched)} of its {len(modules)} modules have no place in"
        raise ValueError(f"{path}: {what} this network's modules (a {type(unet).__name__} of channels "
                         f"{list(unet.config.channels)}); first unmatched keys: {keys}. Is it a LoRA for "
                         f"another model?")
    return {names[m.name]: m for m in modules}


def _config(targets: dict[str, LoraModule], metadata: dict) -> LoraConfig:
    """One peft config for the whole file: the targets by full SDUNet name, rank and alpha per module."""
    first = next(iter(targets.values()))
    pattern = lambda value: {re.escape(ours): value(m) for ours, m in targets.items()}
    return LoraConfig(target_modules=list(targets), r=first.rank, lora_alpha=first.alpha,
                      rank_pattern=pattern(lambda m: m.rank), alpha_pattern=pattern(lambda m: m.alpha),
                      use_rslora=rslora(metadata), inference_mode=True, init_lora_weights=False)


def _fill(layer: LoraLayer, name: str, module: LoraModule, path: Path) -> None:
    """Copy a file's matrices into the adapter's peft layers; a 1x1 kernel fits a Linear and back."""
    for tensor, target, key in ((module.down, layer.lora_A[name].weight, module.keys),
                                (module.up, layer.lora_B[name].weight, module.keys)):
        shape = tuple(target.shape)
        if tuple(tensor.shape) != shape and tensor.numel() == target.numel() and (
                tensor.shape[2:] == (1, 1) or shape[2:] == (1, 1)):
            tensor = tensor.reshape(shape)
        require(tuple(tensor.shape) == shape, f"{path}: module {module.name!r} (keys {list(key)}): a matrix of "
                f"shape {list(tensor.shape)} does not fit the layer's {list(shape)} (a LoRA for another model?)")
        target.copy_(tensor.to(target.dtype))
