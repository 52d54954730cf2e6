"""Training a LoRA (Hu et al. 2021, eq. 3: ``W' = W + (alpha / r) B A``, ``B = 0`` at the start) on
difflab's own UNet through peft, and writing it alone.

    targets = add_lora(model, rank=8)          # peft layers on the attention projections and ResNet
                                               # convolutions; every other weight frozen
    save_adapter(model, "OUT/lora/adapter.safetensors")   # diffusers/peft keys: unet.<module>.lora_A.weight
    export_kohya("adapter.safetensors", "kohya.safetensors")  # lora_unet_<module>.lora_down.weight + .alpha
    merge_lora(model)                          # the adapted network as plain modules (W' in place)

The adapter file loads back with ``pipe.load_lora`` onto the base package (:mod:`difflab.adapters.lora`).
The upsampling convolutions are never targets: difflab's exact sub-pixel upsampling reads its
kernel (``conv.weight``) directly, which a peft wrapper would not change.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from difflab.adapters.lora_files import KOHYA_PREFIX, METADATA_KEY
from difflab.models.base import require
from difflab.outputs import write_file

ADAPTER = "default"
# The layers a LoRA may adapt in difflab's UNet, by name: "all" (attention projections, self and
# cross, and the ResNet blocks' 3x3 convolutions), "attention" (the projections only, as diffusers'
# LoRA scripts do), "cross" (the text cross-attention only: what a new word needs).
TARGETS = {"all": re.compile(r"(^|.*\.)(attn\.(to_qkv|to_out)|cross\.(to_q|to_kv|to_out)|conv1|conv2)$"),
           "attention": re.compile(r"(^|.*\.)(attn\.(to_qkv|to_out)|cross\.(to_q|to_kv|to_out))$"),
           "cross": re.compile(r"(^|.*\.)cross\.(to_q|to_kv|to_out)$")}


def lora_targets(model: nn.Module, layers: str = "all") -> list[str]:
    """The module names a LoRA adapts in difflab's UNet (and VideoUNet): its spatial blocks' ``layers``
    (a key of :data:`TARGETS`)."""
    require(layers in TARGETS, f"lora layers must be one of {', '.join(TARGETS)}, got {layers!r}")
    return [name for name, module in model.named_modules() if TARGETS[layers].match(name)
            and isinstance(module, (nn.Linear, nn.Conv2d)) and not name.startswith("temporal.")]


def add_lora(model: nn.Module, rank: int, alpha: float | None = None, layers: str = "all") -> list[str]:
    """Inject a trainable LoRA of ``rank`` (scale ``alpha / rank``; alpha defaults to the rank) into
    :func:`lora_targets` ``(model, layers)`` and freeze every other parameter. Returns the adapted module names."""
    require(isinstance(rank, int) and not isinstance(rank, bool) and 1 <= rank <= 256,
            f"lora rank must be an integer in [1, 256], got {rank!r}")
    targets = lora_targets(model, layers)
    require(bool(targets), f"a {type(model).__name__} has no module a LoRA adapts here (difflab's UNet has)")
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=targets, init_lora_weights=True)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(".lora_A." in name or ".lora_B." in name)
    return targets


def adapter_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """The LoRA matrices in diffusers' layout (``unet.<module>.lora_A.weight``) and their metadata."""
    tensors, rank, alpha = {}, None, None
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer) and ADAPTER in layer.lora_A:
            tensors[f"unet.{name}.lora_A.weight"] = layer.lora_A[ADAPTER].weight.detach().float().contiguous()
            tensors[f"unet.{name}.lora_B.weight"] = layer.lora_B[ADAPTER].weight.detach().float().contiguous()
            rank, alpha = layer.r[ADAPTER], layer.lora_alpha[ADAPTER]
    require(bool(tensors), "the network holds no trained LoRA")
    return tensors, {"unet.r": rank, "unet.lora_alpha": alpha}


def save_adapter(model: nn.Module, path, extra: dict | None = None) -> Path:
    """Write the LoRA alone (safetensors, diffusers' key layout and ``lora_adapter_metadata``), atomically."""
    tensors, metadata = adapter_tensors(model)
    header = {METADATA_KEY: json.dumps(metadata), **{k: str(v) for k, v in (extra or {}).items()}}
    return write_file(Path(path), lambda f: f.write(_serialise(tensors, header)), overwrite=True)


def export_kohya(adapter_path, out_path) -> Path:
    """An adapter file rewritten in kohya's layout, which AUTOMATIC1111 and ComfyUI read:
    ``lora_unet_<module, "." as "_">.lora_down.weight`` / ``.lora_up.weight`` and ``.alpha``."""
    tensors = _kohya_tensors(Path(adapter_path))
    return write_file(Path(out_path), lambda f: f.write(_serialise(tensors, {})), overwrite=False)


def _kohya_tensors(adapter_path: Path) -> dict[str, torch.Tensor]:
    from difflab.adapters.lora_files import read_lora_file
    modules, _ = read_lora_file(adapter_path)
    tensors = {}
    for m in modules:
        stem = KOHYA_PREFIX + m.name.replace(".", "_")
        tensors[f"{stem}.lora_down.weight"] = m.down.contiguous()
        tensors[f"{stem}.lora_up.weight"] = m.up.contiguous()
        tensors[f"{stem}.alpha"] = torch.tensor(float(m.alpha))
    return tensors


def export_adapter(model: nn.Module, folder, extra: dict | None = None) -> nn.Module:
    """``FOLDER/adapter.safetensors`` (the LoRA alone) and ``FOLDER/kohya.safetensors`` (the same in
    kohya's layout); returns ``model`` with the LoRA merged (:func:`merge_lora`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    adapter = save_adapter(model, folder / "adapter.safetensors", extra)
    kohya = folder / "kohya.safetensors"
    write_file(kohya, lambda f: f.write(_serialise(_kohya_tensors(adapter), {})), overwrite=True)
    return merge_lora(model)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA into its layer's weight and put the plain layer back (peft's merge, then
    unwrap), so the network saves as the architecture it was before :func:`add_lora`."""
    for name, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]:
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def _serialise(tensors: dict, metadata: dict) -> bytes:
    from safetensors.torch import save
    return save(tensors, metadata=metadata)

