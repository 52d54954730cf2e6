"""What a model folder or file is, read from its configs and safetensors headers only: no weight is
loaded, nothing is imported from torch (``difflab info PATH`` answers in a fraction of a second
even for a 7 GB file).

A safetensors file starts with an 8-byte little-endian header length and a JSON header that lists
every tensor's dtype and shape, so parameter counts come from the header alone.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

MAX_HEADER_BYTES = 100 << 20   # safetensors' own limit on the JSON header


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file (tensor name -> {dtype, shape, data_offsets})."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path} is not a safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER_BYTES:
            raise ValueError(f"{path} is not a safetensors file (header length {length:,} bytes)")
        text = f.read(length)
    try:
        header = json.loads(text)
    except ValueError:
        raise ValueError(f"{path}: the safetensors header is not valid JSON (a truncated or foreign file?)") from None
    header.pop("__metadata__", None)
    return header


def parameter_count(files) -> int:
    total = 0
    for path in files:
        for entry in safetensors_header(path).values():
            count = 1
            for side in entry.get("shape", []):
                count *= int(side)
            total += count
    return total


def describe(path) -> list[tuple[str, str]]:
    """Rows (field, value) describing a difflab package (a bundled model by name too), a diffusers
    folder or a safetensors file."""
    from difflab.settings import BUNDLED_MODELS
    if isinstance(path, str) and path in BUNDLED_MODELS and not Path(path).exists():
        path = BUNDLED_MODELS[path]
    path = Path(path)
    if path.is_file():
        return _describe_file(path)
    if (path / "model_index.json").is_file():
        return _describe_diffusers(path)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return _describe_package(path)
    raise ValueError(f"{path} is neither a difflab package (config.json + model.safetensors), a diffusers folder "
                     f"(model_index.json), a .safetensors file nor a bundled model ({', '.join(BUNDLED_MODELS)})")


def _describe_package(folder: Path) -> list[tuple[str, str]]:
    config = json.loads((folder / "config.json").read_text())
    diffusion, codec = config.get("diffusion", {}), config.get("codec") or {"type": "image"}
    data, conditioning = config.get("data", {}), config.get("conditioning", {})
    makes = {"video": f"video, {codec.get('frames')} frames", "audio": "audio (log-mel spectrogram -> waveform)",
             "vae": "images through its VAE (vae/)"}.get(codec.get("type"), "images")
    sampling = config.get("sampling")
    return [("kind", "difflab model package"), ("folder", str(folder)), ("makes", makes),
            ("network", str(config.get("class_name", "UNet"))),
            ("parameters", f"{parameter_count([folder / 'model.safetensors']):,}"),
            ("prediction type", str(diffusion.get("prediction_type"))),
            ("schedule", str(diffusion.get("schedule", {}).get("kind"))),
            ("resolution", f"{data.get('resolution')} px, {data.get('channels')} channels, dataset {data.get('dataset')}"),
            ("text encoder", json.dumps(conditioning.get("encoder"))),
            ("sampling", ", ".join(f"{k} {v}" for k, v in sampling.items()) if sampling else "difflab's defaults")]


def _describe_diffusers(folder: Path) -> list[tuple[str, str]]:
    index = json.loads((folder / "model_index.json").read_text())
    rows = [("kind", f"diffusers folder: {index.get('_class_name')}")]
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        config = json.loads(scheduler.read_text())
        rows.append(("scheduler", f"{config.get('_class_name')}, prediction type "
                                  f"{config.get('prediction_type', 'flow' if 'FlowMatch' in str(config.get('_class_name')) else 'epsilon')}, "
                                  f"spacing {config.get('timestep_spacing', 'n/a')}"))
    for part in sorted(p.name for p in folder.iterdir() if p.is_dir()):
        files = sorted((folder / part).glob("*.safetensors"))
        config = folder / part / "config.json"
        name = json.loads(config.read_text()).get("_class_name") or \
            (json.loads(config.read_text()).get("architectures") or ["?"])[0] if config.is_file() else ""
        if files:
            rows.append((part, f"{name}, {parameter_count(files):,} parameters"))
        elif (folder / part / "tokenizer_config.json").is_file() or (folder / part / "vocab.json").is_file():
            rows.append((part, "tokenizer"))
    return rows


def _describe_file(path: Path) -> list[tuple[str, str]]:
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path}: only .safetensors files are read (a {path.suffix} may be a pickle, which can "
                         f"run code when opened)")
    header = safetensors_header(path)
    prefixes = {}
    for key in header:
        top = key.split(".")[0] + ("." + key.split(".")[1] if key.startswith(("model.", "conditioner.")) else "")
        prefixes[top] = prefixes.get(top, 0) + 1
    rows = [("kind", "single safetensors file"), ("parameters", f"{parameter_count([path]):,}"),
            ("tensors", f"{len(header):,}")]
    rows += [(f"  {prefix}.*", f"{count:,} tensors") for prefix, count in sorted(prefixes.items())]
    return rows
