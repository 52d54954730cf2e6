"""Strict loading of foreign tensors into a difflab network through an explicit key map.

In the spirit of nanoGPT's ``from_pretrained``, made strict: the map names, for every source
tensor, the parameter it fills; a source tensor the map does not name, a parameter no source fills,
and a shape that does not fit are each refused with one line naming the key (and both shapes),
before any tensor is read. Two conversions are part of the contract and nothing else is done:

- several source keys mapped to one parameter are stacked along dim 0 in the map's order (a fused
  projection: ``to_q``, ``to_k``, ``to_v`` -> ``to_qkv``), each filling an equal share of its rows;
- a 1x1 convolution kernel ``[O, I, 1, 1]`` fills a Linear weight ``[O, I]`` (the same linear map
  of channels: old checkpoints store attention projections as 1x1 convolutions).

Beside it, the two file helpers a converter needs: a JSON config, and a safetensors weights file
(pickle weights refused without being opened).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from difflab.models.base import require

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")


def source_view(tensors):
    """(keys, shape_of, read) of a dict of tensors or of an open ``safe_open`` file (read lazily)."""
    if hasattr(tensors, "get_slice"):
        return list(tensors.keys()), lambda k: tuple(tensors.get_slice(k).get_shape()), tensors.get_tensor
    return list(tensors.keys()), lambda k: tuple(tensors[k].shape), tensors.__getitem__


def _fits(shape: tuple, part: tuple) -> bool:
    return shape == part or (len(part) == 2 and shape == (*part, 1, 1))


def load_mapped(model: nn.Module, tensors, mapping: dict[str, str], source: str = "weights",
                prefix: str = "") -> None:
    """Fill every entry of ``model.state_dict()`` from ``tensors`` through ``mapping``, strictly.

    ``tensors``: a dict of tensors or an open safetensors file (``safe_open``; shapes are read from
    its header and a tensor only once all checks pass). ``mapping``: source key (without ``prefix``)
    -> model key. ``prefix``: only source keys that start with it belong to this model (a
    single-file checkpoint holds other networks too), and each of those must be used. ``source``
    names the weights in errors. A model built on the ``meta`` device receives the tensors
    themselves (no second copy); otherwise they are copied into its parameters. Tensors are cast to
    the dtype of the parameter they fill.
    """
    keys, shape_of, read = source_view(tensors)
    keys = sorted(k[len(prefix):] for k in keys if k.startswith(prefix))
    require(keys, f"{source}: no tensors" + (f" under {prefix!r}" if prefix else ""))
    name, targets = type(model).__name__, model.state_dict()
    unused = [k for k in keys if k not in mapping]
    if unused:
        raise ValueError(f"{source}: tensor {prefix + unused[0]!r} has no place in {name} ({len(unused)} unused "
                         f"in all); do the weights belong to this config?")
    stacks: dict[str, list[str]] = {}
    for theirs, ours in mapping.items():
        require(ours in targets,
                f"key map of {name}: {theirs!r} -> {ours!r}, which {name} does not have (a bug in the map)")
        stacks.setdefault(ours, []).append(theirs)
    present = set(keys)
    for ours, target in targets.items():
        require(ours in stacks, f"{source}: nothing fills {name}'s {ours!r} (the key map has no source for it)")
        _check_stack(stacks[ours], tuple(target.shape), present, shape_of, f"{name}'s {ours!r}", source, prefix)
    state = {}
    for ours, stack in stacks.items():
        pieces = [_read_checked(read, prefix + theirs, source) for theirs in stack]
        # a 1x1 convolution kernel [O, I, 1, 1] filling a Linear weight [O, I]
        pieces = [t.flatten(1) if t.dim() == 4 and targets[ours].dim() == 2 else t for t in pieces]
        state[ours] = (pieces[0] if len(pieces) == 1 else torch.cat(pieces, 0)).to(targets[ours].dtype)
    on_meta = any(t.is_meta for t in targets.values())
    model.load_state_dict(state, strict=True, assign=on_meta)


def _check_stack(stack: list[str], shape: tuple, present: set, shape_of, target: str, source: str, prefix: str):
    """Each of ``stack`` exists and fills its share of ``shape``'s rows (all of it when alone)."""
    part = (shape[0] // len(stack), *shape[1:])
    for theirs in stack:
        require(theirs in present, f"{source}: missing tensor {prefix + theirs!r} (for {target})")
        found = shape_of(prefix + theirs)
        share = f" (one of {len(stack)} stacked into {list(shape)})" if len(stack) > 1 else ""
        require(shape[0] % len(stack) == 0 and _fits(found, part),
                f"{source}: tensor {prefix + theirs!r} has shape {list(found)}, but {target} needs {list(part)}{share}")


def _read_checked(read, key: str, source: str) -> torch.Tensor:
    tensor = read(key)
    require(tensor.is_floating_point() and bool(torch.isfinite(tensor).all()),
            f"{source}: tensor {key!r} is not finite floating point ({tensor.dtype})")
    return tensor


def read_json_object(path: Path) -> dict:
    """A JSON object from ``path`` (one line if missing, invalid or not an object)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        value = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def weight_files(folder: Path, stem: str, variant: str | None = None) -> list[Path]:
    """``folder/stem[.variant].safetensors``, or the shards its ``.index.json`` names; pickle weights
    beside them are refused, never opened."""
    name = stem + (f".{variant}" if variant else "")
    single, index = folder / f"{name}.safetensors", folder / f"{name}.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        shards = sorted(set(read_json_object(index).get("weight_map", {}).values()))
        require(shards and all(Path(s).name == s and (folder / s).is_file() for s in shards),
                f"{index}: its weight_map must name shard files of {folder}, got {shards[:3]}")
        return [folder / s for s in shards]
    pickles = sorted(p.name for p in folder.glob(f"{name}.*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{folder}: only safetensors weights are loaded (pickle files can run code), found {pickles}")
    raise FileNotFoundError(f"{folder} has no {single.name} (nor {index.name})")


def weights_hash(path: Path) -> str:
    """The recipes' weights id of a safetensors file, or of a diffusers model folder's files: sha256
    of each file's first MiB and size (reading a multi-GB file whole at every load would cost seconds)."""
    import hashlib
    path = Path(path)
    digest = hashlib.sha256()
    for file in [path] if path.is_file() else sorted(path.glob("*.safetensors")):
        with open(file, "rb") as f:
            digest.update(f.read(1 << 20))
        digest.update(str(file.stat().st_size).encode())
    return digest.hexdigest()[:16]


def table_key_map(table: dict, column: int, model_keys, what: str) -> dict[str, str]:
    """Foreign key -> model key for each of ``model_keys`` (a state_dict's), through a module table:
    ``table[module][column]`` is the module's name (or names) in one foreign layout, and a parameter
    keeps its last name part (``weight``, ``bias``). ``what`` names the model in the error."""
    mapping = {}
    for key in model_keys:
        module, _, param = key.rpartition(".")
        require(module in table, f"{what} module {module!r} has no entry in the key table (a bug in difflab)")
        names = table[module][column]
        mapping.update({f"{theirs}.{param}": key for theirs in ([names] if isinstance(names, str) else names)})
    return mapping


def component_folder(folder, part: str, class_name: str) -> tuple[Path, dict]:
    """A diffusers component folder (``part/`` of a pipeline folder, or the component folder itself)
    and its checked ``config.json``, which must describe a ``class_name``."""
    folder = Path(folder)
    if (folder / "model_index.json").is_file() and (folder / part).is_dir():
        folder = folder / part
    config = read_json_object(folder / "config.json")
    require(config.get("_class_name", class_name) == class_name,
            f"{folder / 'config.json'} describes {config.get('_class_name')!r}, not {class_name}")
    return folder, config
