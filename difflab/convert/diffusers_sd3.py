"""Stable Diffusion 3 (and 3.5 Large) diffusers folders -> difflab's :class:`~difflab.models.mmdit.MMDiT`
and a :class:`~difflab.pipelines.Pipeline`'s parts.

One table names, for every leaf module of MMDiT, the diffusers ``SD3Transformer2DModel`` tensors
that fill it (three names: q, k and v stacked along dim 0 into one projection)::

    MMDiT                          diffusers SD3Transformer2DModel
    patchify / pos_grid            pos_embed.proj / pos_embed.pos_embed
    time_mlp.0 / .2                time_text_embed.timestep_embedder.linear_1 / .linear_2
    pooled_mlp.0 / .2              time_text_embed.text_embedder.linear_1 / .linear_2
    context_proj                   context_embedder
    blocks.i.image.ada             transformer_blocks.i.norm1.linear
    blocks.i.image.qkv             transformer_blocks.i.attn.to_q + .to_k + .to_v
    blocks.i.image.out             transformer_blocks.i.attn.to_out.0
    blocks.i.image.q_norm / k_norm transformer_blocks.i.attn.norm_q / .norm_k                  (qk_norm)
    blocks.i.image.mlp.0 / .2      transformer_blocks.i.ff.net.0.proj / .ff.net.2
    blocks.i.text.ada              transformer_blocks.i.norm1_context.linear
    blocks.i.text.qkv              transformer_blocks.i.attn.add_q_proj + .add_k_proj + .add_v_proj
    blocks.i.text.out              transformer_blocks.i.attn.to_add_out                        (not the last block)
    blocks.i.text.q_norm / k_norm  transformer_blocks.i.attn.norm_added_q / .norm_added_k      (qk_norm)
    blocks.i.text.mlp.0 / .2       transformer_blocks.i.ff_context.net.0.proj / .net.2         (not the last block)
    ada_out / proj_out             norm_out.linear / proj_out

Loading goes through :func:`difflab.convert.keymap.load_mapped`: every tensor of the folder is used,
every MMDiT parameter and buffer is filled, and every shape is checked before a tensor is read.
:func:`load_sd3` assembles a whole ``StableDiffusion3Pipeline`` folder (transformer, VAE, scheduler,
two CLIPs and the optional T5) as the keyword arguments of ``difflab.Pipeline``. Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from difflab.convert.keymap import component_folder, load_mapped, read_json_object, weight_files
from difflab.models.base import require
from difflab.models.mmdit import MMDiT, MMDiTConfig

WEIGHTS_NAME = "diffusion_pytorch_model"
SD3_DEFAULTS = {"steps": 28, "guidance_scale": 7.0}      # StableDiffusion3Pipeline's defaults
_BUFFERS = {"pos_grid": "pos_embed.pos_embed"}
_STREAMS = {   # a stream's leaves: ours -> (image stream's diffusers names, text stream's)
    "ada": (("norm1.linear",), ("norm1_context.linear",)),
    "qkv": (("attn.to_q", "attn.to_k", "attn.to_v"), ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
    "out": (("attn.to_out.0",), ("attn.to_add_out",)),
    "q_norm": (("attn.norm_q",), ("attn.norm_added_q",)),
    "k_norm": (("attn.norm_k",), ("attn.norm_added_k",)),
    "mlp.0": (("ff.net.0.proj",), ("ff_context.net.0.proj",)),
    "mlp.2": (("ff.net.2",), ("ff_context.net.2",)),
}


def module_table(cfg: MMDiTConfig) -> dict[str, tuple[str, ...]]:
    """Every leaf module of an MMDiT of ``cfg`` -> the diffusers module(s) that fill it, in stacking order."""
    table = {"patchify": ("pos_embed.proj",), "context_proj": ("context_embedder",),
             "time_mlp.0": ("time_text_embed.timestep_embedder.linear_1",),
             "time_mlp.2": ("time_text_embed.timestep_embedder.linear_2",),
             "pooled_mlp.0": ("time_text_embed.text_embedder.linear_1",),
             "pooled_mlp.2": ("time_text_embed.text_embedder.linear_2",),
             "ada_out": ("norm_out.linear",), "proj_out": ("proj_out",)}
    for i in range(cfg.depth):
        for stream, column in (("image", 0), ("text", 1)):
            for leaf, names in _STREAMS.items():
                table[f"blocks.{i}.{stream}.{leaf}"] = tuple(f"transformer_blocks.{i}.{n}" for n in names[column])
    return table


def key_map(cfg: MMDiTConfig, model_keys) -> dict[str, str]:
    """diffusers key -> MMDiT key for each of ``model_keys`` (an MMDiT state_dict's)."""
    table, mapping = module_table(cfg), {}
    for key in model_keys:
        if key in _BUFFERS:
            mapping[_BUFFERS[key]] = key
            continue
        module, _, param = key.rpartition(".")
        require(module in table, f"MMDiT module {module!r} has no entry in the key table (a bug in difflab)")
        mapping.update({f"{theirs}.{param}": key for theirs in table[module]})
    return mapping


def mmdit_from_tensors(cfg: MMDiTConfig, tensors, source: str, dtype: torch.dtype = torch.float32) -> MMDiT:
    """An MMDiT of ``cfg`` holding ``tensors`` (a dict, or an open safetensors file or :class:`Shards`)
    in diffusers' layout; built on the meta device, so the weights are held once."""
    with torch.device("meta"):
        model = MMDiT(config=cfg).to(dtype)
    load_mapped(model, tensors, key_map(cfg, model.state_dict()), source=source)
    return model.eval()


class Shards:
    """Open safetensors files seen as one source (``keys``, ``get_slice``, ``get_tensor``)."""

    def __init__(self, handles: list, paths: list[Path]):
        self.where = {}
        for f, path in zip(handles, paths):
            for key in f.keys():
                require(key not in self.where, f"{path}: tensor {key!r} is also in another shard")
                self.where[key] = f

    def keys(self):
        return list(self.where)

    def get_slice(self, key):
        return self.where[key].get_slice(key)

    def get_tensor(self, key):
        return self.where[key].get_tensor(key)


def load_diffusers_mmdit(folder, dtype: torch.dtype = torch.float32, variant: str | None = None) -> MMDiT:
    """The transformer of a diffusers SD3 folder (``transformer/``, or a pipeline folder holding one)
    as an MMDiT. Reads ``config.json`` (refusing what MMDiT lacks, one line each) and the safetensors
    weights lazily, sharded or not; ``variant``: e.g. ``"fp16"``. Nothing runs from the folder."""
    folder, config = component_folder(folder, "transformer", "SD3Transformer2DModel")
    cfg = MMDiTConfig.from_diffusers(config)
    files = weight_files(folder, WEIGHTS_NAME, variant)
    with contextlib.ExitStack() as stack:
        handles = []
        for path in files:
            try:
                handles.append(stack.enter_context(safe_open(str(path), framework="pt")))
            except (SafetensorError, OSError) as e:
                raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
        source = str(files[0] if len(files) == 1 else folder)
        return mmdit_from_tensors(cfg, handles[0] if len(files) == 1 else Shards(handles, files), source, dtype)


def _has_component(index: dict, name: str) -> bool:
    """Whether ``model_index.json`` names a component (diffusers writes ``[null, null]`` for a None one)."""
    entry = index.get(name)
    return isinstance(entry, list) and len(entry) == 2 and entry[0] is not None


def load_sd3(folder) -> dict:
    """The parts of a diffusers ``StableDiffusion3Pipeline`` folder as ``difflab.Pipeline``'s keyword
    arguments (as :func:`difflab.convert.diffusers_folder.load_diffusers` gives them for SD and SDXL).

    The network is difflab's MMDiT, fed ``context``, ``pooled`` (and an all-true ``context_mask``)
    by :class:`~difflab.models.text_sd3.SD3TextEncoder`; without ``text_encoder_3`` (saved as None)
    the T5 rows are zeros. The flow schedule and its shift come from the scheduler config.
    """
    from difflab.codecs import VAECodec
    from difflab.conditioning import Conditioner
    from difflab.convert.keymap import weights_hash
    from difflab.convert.diffusers_scheduler import from_scheduler_config
    from difflab.convert.diffusers_vae import load_diffusers_vae
    from difflab.models.text_sd3 import sd3_text_encoder_from_folders

    folder = Path(folder)
    index = read_json_object(folder / "model_index.json")
    require(index.get("_class_name") == "StableDiffusion3Pipeline",
            f"{folder / 'model_index.json'}: pipeline {index.get('_class_name')!r} is not a StableDiffusion3Pipeline")
    with_t5 = _has_component(index, "text_encoder_3")
    parts = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    for part in parts + (("text_encoder_3", "tokenizer_3") if with_t5 else ()):
        if not (folder / part).is_dir():
            raise FileNotFoundError(f"{folder} has no {part}/ folder, which its SD3 model_index.json names")
    where = folder / "scheduler" / "scheduler_config.json"
    scheduler = from_scheduler_config(read_json_object(where), where)
    require(scheduler["prediction_type"] == "flow", f"{where}: an SD3 folder needs a flow-matching scheduler, "
                                                    f"got {read_json_object(where).get('_class_name')!r}")
    model = load_diffusers_mmdit(folder / "transformer").requires_grad_(False)
    codec = VAECodec(load_diffusers_vae(folder / "vae").eval().requires_grad_(False))
    require(codec.latent_channels == model.config.in_channels,
            f"{folder}: the VAE's {codec.latent_channels} latent channels differ from the transformer's "
            f"in_channels={model.config.in_channels}")
    encoder = sd3_text_encoder_from_folders(folder, model.config.context_dim, with_t5)
    require(encoder.clip_l.model.config.projection_dim + encoder.clip_g.model.config.projection_dim
            == model.config.pooled_dim, f"{folder}: the two CLIPs' projections do not add up to the "
                                        f"transformer's pooled_projection_dim={model.config.pooled_dim}")
    defaults = {**SD3_DEFAULTS, "sampler": scheduler["sampler"], "spacing": scheduler["spacing"]}
    return {"model": model, "schedule": scheduler["schedule"], "prediction_type": "flow",
            "conditioner": Conditioner(encoder), "codec": codec,
            "resolution": model.config.sample_size * codec.downsampling, "name": folder.name,
            "weights": weights_hash(folder / "transformer"), "defaults": defaults, "folder": folder}
