"""Autoencoder weights of Stable Diffusion 1.x / 2.x, SDXL, SD3 and FLUX -> difflab's :class:`AutoencoderKL`.

The KL autoencoder of Kingma & Welling (2014) as the latent space of Rombach et al. (2022), loaded
from a diffusers ``vae/`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) or
from the original single-file layout (CompVis / Stability checkpoints under
``first_stage_model.``; FLUX's ``ae.safetensors`` without a prefix). One table, derived from the
config (levels ``n``, ResNet blocks per level ``L``; the decoder's levels have ``L + 1``), names
every leaf module of difflab's network in the three layouts::

    AutoencoderKL            diffusers                                original
    C.conv_in                C.conv_in                                C.conv_in
    encoder.blocks.k         encoder.down_blocks.i.resnets.j          encoder.down.i.block.j
    encoder.blocks.k.conv    encoder.down_blocks.i.downsamplers.0.conv  encoder.down.i.downsample.conv
    C.blocks.k, k+1, k+2     C.mid_block.resnets.0, .attentions.0, .resnets.1   C.mid.block_1, .attn_1, .block_2
    decoder.blocks.k         decoder.up_blocks.u.resnets.j            decoder.up.(n-1-u).block.j
    decoder.blocks.k.conv    decoder.up_blocks.u.upsamplers.0.conv    decoder.up.(n-1-u).upsample.conv
    C.norm_out / conv_out    C.conv_norm_out / conv_out               C.norm_out / conv_out
    quant_conv, post_quant_conv (when the config has them): the same names everywhere

``C`` is ``encoder`` or ``decoder``; ``k`` counts difflab's flat block list (the encoder's levels
then its middle; the decoder's middle then its levels). The original indexes the decoder's levels
by resolution like the encoder's, so diffusers' first up block (the coarsest) is ``up.(n-1)``.
Inside a ResNet block the shortcut is ``skip`` / ``conv_shortcut`` / ``nin_shortcut``; in the
attention block ``norm`` / ``group_norm`` / ``norm``, ``attn.to_out`` / ``to_out.0`` / ``proj_out``,
and difflab's fused ``attn.to_qkv`` stacks ``to_q, to_k, to_v`` (original: ``q, k, v``). The
original's attention projections are 1x1 convolutions ``[C, C, 1, 1]``; diffusers' are Linear
``[C, C]`` (files written by older diffusers name them ``query, key, value, proj_attn``: the
``diffusers_legacy`` layout, recognised by its keys). Loading goes through
:func:`difflab.convert.keymap.load_mapped`: every source tensor used, every parameter filled, every
shape checked before a tensor is read, each failure one line naming the key.

Why the original map is right, and how far that goes: :func:`original_from_diffusers_state` is its
inverse. The tests rename a random diffusers state with it, load the result through the original
map, and get the network that the diffusers map gives (itself checked against diffusers' forward
pass), so the two directions agree; and diffusers' own single-file converter, an independent
reading of the original names, turns the renamed state back into the diffusers one exactly, so a
mistake made alike in both directions (say, the decoder's level order) would not cancel unseen.
The limits: no published file is read (nothing is downloaded); the tables are exercised at small
sizes (two and three levels, one and two ResNets per level) and the same code derives SD's size; a
file with tensors beyond the autoencoder under its prefix (EMA copies, a training loss network) is
refused by name rather than guessed about.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from difflab.convert.keymap import component_folder, load_mapped, table_key_map, weight_files
from difflab.models.base import require
from difflab.models.vae import VAE_CONFIGS, AutoencoderKL, AutoencoderKLConfig

LAYOUTS = ("diffusers", "diffusers_legacy", "original")
ORIGINAL_PREFIX = "first_stage_model."
WEIGHTS_NAME = "diffusion_pytorch_model"
# Leaves of a module: difflab's name -> its name in each layout (a tuple: stacked along dim 0).
_PLAIN = {"": ("", "", "")}
_RES = {"norm1": ("norm1",) * 3, "conv1": ("conv1",) * 3, "norm2": ("norm2",) * 3, "conv2": ("conv2",) * 3,
        "skip": ("conv_shortcut", "conv_shortcut", "nin_shortcut")}
_ATTN = {"norm": ("group_norm", "group_norm", "norm"),
         "attn.to_qkv": (("to_q", "to_k", "to_v"), ("query", "key", "value"), ("q", "k", "v")),
         "attn.to_out": ("to_out.0", "proj_attn", "proj_out")}


def _join(*names: str) -> str:
    return ".".join(n for n in names if n)


def _add(table: dict, leaves: dict, ours: str, diffusers: str, original: str) -> None:
    for leaf, names in leaves.items():
        table[_join(ours, leaf)] = tuple(tuple(_join(where, n) for n in ((name,) if isinstance(name, str) else name))
                                         for where, name in zip((diffusers, diffusers, original), names))


def _middle(table: dict, cfg: AutoencoderKLConfig, coder: str, k: int) -> None:
    _add(table, _RES, f"{coder}.blocks.{k}", f"{coder}.mid_block.resnets.0", f"{coder}.mid.block_1")
    if cfg.mid_attention:
        _add(table, _ATTN, f"{coder}.blocks.{k + 1}", f"{coder}.mid_block.attentions.0", f"{coder}.mid.attn_1")
    _add(table, _RES, f"{coder}.blocks.{k + 2}", f"{coder}.mid_block.resnets.1", f"{coder}.mid.block_2")


def module_table(cfg: AutoencoderKLConfig) -> dict[str, tuple[tuple[str, ...], ...]]:
    """Every leaf module of an AutoencoderKL of ``cfg`` -> its names in each of :data:`LAYOUTS`."""
    n, L, table = len(cfg.channels), cfg.layers_per_block, {}
    for coder in ("encoder", "decoder"):
        _add(table, _PLAIN, f"{coder}.conv_in", f"{coder}.conv_in", f"{coder}.conv_in")
        _add(table, _PLAIN, f"{coder}.norm_out", f"{coder}.conv_norm_out", f"{coder}.norm_out")
        _add(table, _PLAIN, f"{coder}.conv_out", f"{coder}.conv_out", f"{coder}.conv_out")
    k = 0                                                            # encoder.blocks index
    for i in range(n):
        for j in range(L):
            _add(table, _RES, f"encoder.blocks.{k}", f"encoder.down_blocks.{i}.resnets.{j}",
                 f"encoder.down.{i}.block.{j}")
            k += 1
        if i < n - 1:
            _add(table, _PLAIN, f"encoder.blocks.{k}.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv",
                 f"encoder.down.{i}.downsample.conv")
            k += 1
    _middle(table, cfg, "encoder", k)
    _middle(table, cfg, "decoder", 0)
    k = 3                                                            # decoder.blocks index, after the middle
    for u in range(n):
        i = n - 1 - u                                                # the original's level index
        for j in range(L + 1):
            _add(table, _RES, f"decoder.blocks.{k}", f"decoder.up_blocks.{u}.resnets.{j}", f"decoder.up.{i}.block.{j}")
            k += 1
        if u < n - 1:
            _add(table, _PLAIN, f"decoder.blocks.{k}.conv", f"decoder.up_blocks.{u}.upsamplers.0.conv",
                 f"decoder.up.{i}.upsample.conv")
            k += 1
    for name in ("quant_conv", "post_quant_conv"):
        if getattr(cfg, name):
            _add(table, _PLAIN, name, name, name)
    return table


def key_map(cfg: AutoencoderKLConfig, model_keys, layout: str = "diffusers") -> dict[str, str]:
    """Source key -> AutoencoderKL key for each of ``model_keys`` (a state_dict's), in ``layout``."""
    require(layout in LAYOUTS, f"layout must be one of {LAYOUTS}, got {layout!r}")
    return table_key_map(module_table(cfg), LAYOUTS.index(layout), model_keys, "AutoencoderKL")


def vae_from_tensors(cfg: AutoencoderKLConfig, tensors, layout: str, source: str, prefix: str = "",
                     dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    """An AutoencoderKL of ``cfg`` holding ``tensors`` (a dict or an open safetensors file) in ``layout``.

    Built on the meta device, so the weights are held once.
    """
    with torch.device("meta"):
        model = AutoencoderKL(config=cfg).to(dtype)
    load_mapped(model, tensors, key_map(cfg, model.state_dict(), layout), source=source, prefix=prefix)
    return model.to(memory_format=torch.channels_last).eval()


def _diffusers_layout(keys) -> str:
    return "diffusers_legacy" if any(k.endswith(".query.weight") for k in keys) else "diffusers"


def vae_from_diffusers_state(tensors: dict[str, torch.Tensor], cfg: AutoencoderKLConfig,
                             dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    """An AutoencoderKL from an in-memory diffusers ``AutoencoderKL`` state dict."""
    return vae_from_tensors(cfg, tensors, _diffusers_layout(tensors), "diffusers VAE state", dtype=dtype)


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from None


def load_diffusers_vae(folder, dtype: torch.dtype = torch.float32, variant: str | None = None) -> AutoencoderKL:
    """The autoencoder of a diffusers folder (``vae/``, or a pipeline folder holding one) as an AutoencoderKL.

    Reads ``config.json`` (:meth:`AutoencoderKLConfig.from_diffusers` refuses settings difflab lacks)
    and the safetensors weights lazily. ``variant``: e.g. ``"fp16"`` for
    ``diffusion_pytorch_model.fp16.safetensors``. Nothing runs from the folder; nothing is downloaded.
    """
    folder, config = component_folder(folder, "vae", "AutoencoderKL")
    cfg = AutoencoderKLConfig.from_diffusers(config)
    files = weight_files(folder, WEIGHTS_NAME, variant)
    require(len(files) == 1, f"{folder}: a sharded VAE is not supported (found {len(files)} shards)")
    path = files[0]
    with _open(path) as f:
        return vae_from_tensors(cfg, f, _diffusers_layout(f.keys()), str(path), dtype=dtype)


def _config(cfg) -> AutoencoderKLConfig:
    if isinstance(cfg, str):
        require(cfg in VAE_CONFIGS, f"unknown VAE family {cfg!r}; known: {sorted(VAE_CONFIGS)}")
        return VAE_CONFIGS[cfg]
    require(isinstance(cfg, AutoencoderKLConfig), f"cfg must be an AutoencoderKLConfig or a family name "
                                                  f"{sorted(VAE_CONFIGS)}, got {type(cfg).__name__}")
    return cfg


def vae_from_original_state(tensors, cfg, prefix: str = ORIGINAL_PREFIX,
                            dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    """An AutoencoderKL from tensors in the original layout (a dict or an open safetensors file).

    Only keys under ``prefix`` are the autoencoder's (each must be used); the rest of a checkpoint
    (UNet, text encoders) belongs to other loaders. No config travels with such files: pass one,
    or a family name of :data:`difflab.models.vae.VAE_CONFIGS` ("sd", "sdxl", "sd3", "flux").
    """
    return vae_from_tensors(_config(cfg), tensors, "original", f"single-file VAE ({prefix}*)", prefix, dtype)


def load_single_file_vae(path, cfg, prefix: str | None = None, dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    """The autoencoder of a single safetensors file in the original layout, read lazily.

    ``cfg``: an :class:`AutoencoderKLConfig` or a family name of :data:`~difflab.models.vae.VAE_CONFIGS`.
    ``prefix``: where its tensors sit; by default ``first_stage_model.`` when the file has such
    keys (a whole SD / SDXL / SD3 checkpoint), else none (a standalone VAE file, FLUX's ``ae``).
    """
    path = Path(path)
    require(path.suffix == ".safetensors", f"{path}: only .safetensors files are loaded (pickle files can run code)")
    with _open(path) as f:
        if prefix is None:
            prefix = ORIGINAL_PREFIX if any(k.startswith(ORIGINAL_PREFIX) for k in f.keys()) else ""
        return vae_from_tensors(_config(cfg), f, "original", str(path), prefix, dtype)


def original_from_diffusers_state(tensors: dict[str, torch.Tensor], cfg: AutoencoderKLConfig,
                                  prefix: str = ORIGINAL_PREFIX) -> dict[str, torch.Tensor]:
    """The inverse direction: a diffusers AutoencoderKL state dict renamed to the original layout.

    Used by the tests to make original-layout checkpoints (see the module's docstring).
    """
    names = module_table(cfg).values()
    original = {theirs: old for row in names for theirs, old in zip(row[0], row[2])}
    out = {}
    for key, tensor in tensors.items():
        module, _, param = key.rpartition(".")
        require(module in original, f"diffusers VAE state: tensor {key!r} has no place in AutoencoderKL")
        # The autoencoder's only 2-D weights are its attention projections: 1x1 convolutions in the original.
        out[f"{prefix}{original[module]}.{param}"] = tensor[:, :, None, None] if tensor.dim() == 2 else tensor
    return out
