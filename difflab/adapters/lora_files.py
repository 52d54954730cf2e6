"""LoRA files (Hu et al. 2021) as the community writes them, read into one form: per foreign module,
its down (A) and up (B) matrices and its alpha, so that ``W' = W + scale * (alpha / r) * up @ down``.

Layouts read (a file may hold one only; UNet keys only, text-encoder keys are refused for now)::

    peft / diffusers   [unet.]<module>.lora_A.weight, .lora_B.weight    alpha: the file's diffusers
                       metadata (lora_adapter_metadata: unet.lora_alpha, unet.alpha_pattern), else r
    old diffusers      [unet.]<module>.lora.down.weight, .lora.up.weight, [<module>.alpha]
                       <block>.processor.to_q_lora.down.weight (to_q/to_k/to_v/to_out -> to_out.0)
    kohya (A1111)      lora_unet_<module with "." as "_">.lora_down.weight, .lora_up.weight, .alpha

``<module>`` is a diffusers UNet2DConditionModel name or a name of the original (CompVis / SGM)
layout; :mod:`difflab.adapters.lora` maps both to difflab's own through the key map of
:mod:`difflab.convert.diffusers_unet`. Only safetensors files are read.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from difflab.models.base import require

METADATA_KEY = "lora_adapter_metadata"                                   # diffusers' safetensors header entry
TEXT_ENCODER_PREFIXES = ("text_encoder.", "text_encoder_2.", "lora_te_", "lora_te1_", "lora_te2_")
KOHYA_PREFIX = "lora_unet_"
# key suffix -> which tensor of the module it is
_SUFFIXES = ((".lora_A.weight", "down"), (".lora_B.weight", "up"), (".lora.down.weight", "down"),
             (".lora.up.weight", "up"), (".lora_down.weight", "down"), (".lora_up.weight", "up"), (".alpha", "alpha"))
_PROCESSOR = re.compile(r"^(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


@dataclass
class LoraModule:
    """One adapted module of a file: ``down`` [r, in(, kh, kw)], ``up`` [out, r(, 1, 1)], and where
    each came from (the file's keys, for messages)."""

    name: str                      # the module's name in the file (diffusers/original dots, or kohya's flat form)
    kohya: bool
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None
    keys: tuple[str, ...] = ()

    @property
    def rank(self) -> int:
        return self.down.shape[0]


def file_hash(path: Path) -> str:
    """sha256 of the file's bytes (what a recipe records for each LoRA)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_path(path) -> Path:
    """The .safetensors file a user named: the file, or the single one in a folder (diffusers'
    ``save_lora_weights`` writes ``pytorch_lora_weights.safetensors``)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        require(len(files) == 1, f"{path}: a LoRA folder must hold exactly one .safetensors file, found "
                                 f"{[f.name for f in files]}")
        path = files[0]
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file {path} does not exist")
    require(path.suffix == ".safetensors", f"{path}: only .safetensors LoRA files are read (pickle files are "
                                           f"never opened)")
    return path


def read_lora_file(path: Path) -> tuple[list[LoraModule], dict]:
    """The modules of a LoRA file and its diffusers metadata (``{}`` if none), validated."""
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            header = f.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from None
    require(tensors, f"{path}: the file holds no tensors")
    refused = [k for k in tensors if k.startswith(TEXT_ENCODER_PREFIXES)]
    if refused:
        raise ValueError(f"{path}: text-encoder LoRA keys are not supported yet ({refused[0]!r}, "
                         f"{len(refused)} in all); only UNet LoRAs load")
    metadata = _metadata(header.get(METADATA_KEY), path)
    modules = _group(tensors, path)
    for module in modules.values():
        _complete(module, metadata, path)
    return list(modules.values()), metadata


def _metadata(raw: str | None, path: Path) -> dict:
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError(f"{path}: the {METADATA_KEY!r} header entry is not valid JSON") from None
    unet = {k[len("unet."):]: v for k, v in data.items() if k.startswith("unet.")}
    require(not unet.get("use_dora"), f"{path}: DoRA adapters (use_dora) are not supported")
    return unet


def _group(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, LoraModule]:
    modules: dict[str, LoraModule] = {}
    for key, tensor in tensors.items():
        name, part, kohya = _parse_key(key, path)
        module = modules.setdefault(name, LoraModule(name, kohya))
        require(getattr(module, part) is None, f"{path}: {part} of module {name!r} is given twice (again by {key!r})")
        require(tensor.is_floating_point() and bool(torch.isfinite(tensor).all()),
                f"{path}: tensor {key!r} is not finite floating point ({tensor.dtype})")
        setattr(module, part, float(tensor) if part == "alpha" else tensor.float())
        module.keys += (key,)
    return modules


def _parse_key(key: str, path: Path) -> tuple[str, str, bool]:
    """(module name, "down" | "up" | "alpha", kohya layout?) of one key of a file."""
    processor = _PROCESSOR.match(key)
    if processor:
        block, projection, part = processor.groups()
        name = f"{block}.{'to_out.0' if projection == 'to_out' else projection}"
        return _strip_prefix(name), part, False
    for suffix, part in _SUFFIXES:
        if key.endswith(suffix):
            name = key[: -len(suffix)]
            if name.startswith(KOHYA_PREFIX):
                return name[len(KOHYA_PREFIX):], part, True
            return _strip_prefix(name), part, False
    raise ValueError(f"{path}: key {key!r} is not a LoRA key of a known layout (diffusers/peft lora_A/lora_B, "
                     f"lora.down/lora.up, kohya lora_down/lora_up/alpha)")


def _strip_prefix(name: str) -> str:
    for prefix in ("base_model.model.", "unet."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def _complete(module: LoraModule, metadata: dict, path: Path) -> None:
    """Checks that both matrices are there and of one rank, and settles alpha (file, metadata, or r)."""
    require(module.down is not None and module.up is not None,
            f"{path}: module {module.name!r} has {'no down (A)' if module.down is None else 'no up (B)'} matrix "
            f"(keys {list(module.keys)})")
    require(module.down.dim() in (2, 4) and module.up.dim() in (2, 4) and module.up.shape[1] == module.rank,
            f"{path}: module {module.name!r}: down {list(module.down.shape)} and up {list(module.up.shape)} "
            f"are not a rank-r pair ([r, in] and [out, r])")
    if module.alpha is None:
        module.alpha = float(_metadata_alpha(module.name, metadata) or module.rank)


def _metadata_alpha(name: str, metadata: dict):
    """peft's rule: an alpha_pattern key matching the end of the name (regex), else lora_alpha."""
    for pattern, alpha in (metadata.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            return alpha
    return metadata.get("lora_alpha")


def rslora(metadata: dict) -> bool:
    """Whether the file's adapter scales by alpha / sqrt(r) (rank-stabilised LoRA) instead of alpha / r."""
    return bool(metadata.get("use_rslora"))
