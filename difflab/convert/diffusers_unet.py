"""Stable Diffusion 1.x / 2.x and SDXL UNet weights -> :class:`~difflab.models.sd_unet.SDUNet`.

Two source layouts: a diffusers ``unet/`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``)
and the original CompVis / Stability layout of single-file checkpoints (A1111, ComfyUI), whose UNet
tensors sit under ``model.diffusion_model.``. One table, derived from the config (levels, ResNet
blocks per level, which levels have attention, transformer depth), names every leaf module of
SDUNet in both layouts::

    SDUNet                          diffusers UNet2DConditionModel                original
    conv_in                         conv_in                                       input_blocks.0.0
    time_mlp.0 / .2                 time_embedding.linear_1 / .linear_2           time_embed.0 / .2
    add_mlp.0 / .2       (SDXL)     add_embedding.linear_1 / .linear_2            label_emb.0.0 / .0.2
    down.i.res.j                    down_blocks.i.resnets.j                       input_blocks.N.0
    down.i.attn.j                   down_blocks.i.attentions.j                    input_blocks.N.1
    down.i.resample.conv            down_blocks.i.downsamplers.0.conv             input_blocks.N.0.op
    mid_res1 / mid_attn / mid_res2  mid_block.resnets.0 / .attentions.0 / .resnets.1   middle_block.0 / .1 / .2
    up.u.res.j                      up_blocks.u.resnets.j                         output_blocks.M.0
    up.u.attn.j                     up_blocks.u.attentions.j                      output_blocks.M.1
    up.u.resample.conv              up_blocks.u.upsamplers.0.conv                 output_blocks.M.1 or .2 .conv
    norm_out / conv_out             conv_norm_out / conv_out                      out.0 / out.2

``N`` counts the encoder's steps (conv_in is 0, then one per ResNet block and one per downsampler),
``M`` the decoder's ResNet blocks; the upsampler follows the level's last transformer, if it has
one. Inside a ResNet block the original names are ``in_layers.0/.2``, ``emb_layers.1``,
``out_layers.0/.3``, ``skip_connection``; inside a spatial transformer both layouts share names.

Loading follows nanoGPT's ``from_pretrained``, made strict: every tensor of the source is used (or
the first unused key is named), every SDUNet parameter is filled (or the first missing one is named),
and every shape is compared (naming the key and both shapes) before a tensor is read.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open

from difflab.convert.keymap import component_folder, table_key_map, weight_files
from difflab.models.base import require
from difflab.models.sd_unet import SDUNet, SDUNetConfig

LAYOUTS = ("diffusers", "original")
ORIGINAL_PREFIX = "model.diffusion_model."
WEIGHTS_NAME = "diffusion_pytorch_model"
# (SDUNet, diffusers, original) names of a ResNet block's leaves; (SDUNet, both foreign) of a transformer block's.
_RES_LEAVES = (("norm1", "norm1", "in_layers.0"), ("conv1", "conv1", "in_layers.2"),
               ("time_proj", "time_emb_proj", "emb_layers.1"), ("norm2", "norm2", "out_layers.0"),
               ("conv2", "conv2", "out_layers.3"), ("skip", "conv_shortcut", "skip_connection"))
_BLOCK_LEAVES = (("norm1", "norm1"), ("norm2", "norm2"), ("norm3", "norm3"), ("ff_in", "ff.net.0.proj"),
                 ("ff_out", "ff.net.2")) + tuple(
    (f"{ours}.{a}", f"{theirs}.{b}") for ours, theirs in (("self_attn", "attn1"), ("cross_attn", "attn2"))
    for a, b in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out", "to_out.0")))


def _res(ours: str, diffusers: str, original: str) -> dict[str, tuple[str, str]]:
    # "skip" is listed for every block; the keys that exist (the model's, or the source's) select it.
    return {f"{ours}.{a}": (f"{diffusers}.{b}", f"{original}.{c}") for a, b, c in _RES_LEAVES}


def _transformer(ours: str, diffusers: str, original: str, depth: int) -> dict[str, tuple[str, str]]:
    table = {f"{ours}.{a}": (f"{diffusers}.{a}", f"{original}.{a}") for a in ("norm", "proj_in", "proj_out")}
    for k in range(depth):
        table.update({f"{ours}.blocks.{k}.{a}": (f"{diffusers}.transformer_blocks.{k}.{b}",
                                                  f"{original}.transformer_blocks.{k}.{b}") for a, b in _BLOCK_LEAVES})
    return table


def module_table(cfg: SDUNetConfig) -> dict[str, tuple[str, str]]:
    """Every leaf module of an SDUNet of ``cfg`` -> (its diffusers name, its original name)."""
    n, L, depth = len(cfg.channels), cfg.layers_per_block, cfg.transformer_depth
    table = {"conv_in": ("conv_in", "input_blocks.0.0"), "norm_out": ("conv_norm_out", "out.0"),
             "conv_out": ("conv_out", "out.2"), "time_mlp.0": ("time_embedding.linear_1", "time_embed.0"),
             "time_mlp.2": ("time_embedding.linear_2", "time_embed.2")}
    if cfg.add_embed_dim:
        table |= {"add_mlp.0": ("add_embedding.linear_1", "label_emb.0.0"),
                  "add_mlp.2": ("add_embedding.linear_2", "label_emb.0.2")}
    step = 1                                                        # input_blocks index
    for i in range(n):
        for j in range(L):
            table |= _res(f"down.{i}.res.{j}", f"down_blocks.{i}.resnets.{j}", f"input_blocks.{step}.0")
            if cfg.down_attention[i]:
                table |= _transformer(f"down.{i}.attn.{j}", f"down_blocks.{i}.attentions.{j}",
                                      f"input_blocks.{step}.1", depth[i])
            step += 1
        if i < n - 1:
            table[f"down.{i}.resample.conv"] = (f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{step}.0.op")
            step += 1
    table |= _res("mid_res1", "mid_block.resnets.0", "middle_block.0")
    table |= _transformer("mid_attn", "mid_block.attentions.0", "middle_block.1", depth[-1])
    table |= _res("mid_res2", "mid_block.resnets.1", "middle_block.2")
    step = 0                                                        # output_blocks index
    for u, i in enumerate(reversed(range(n))):
        for j in range(L + 1):
            table |= _res(f"up.{u}.res.{j}", f"up_blocks.{u}.resnets.{j}", f"output_blocks.{step}.0")
            if cfg.up_attention[i]:
                table |= _transformer(f"up.{u}.attn.{j}", f"up_blocks.{u}.attentions.{j}",
                                      f"output_blocks.{step}.1", depth[i])
            step += 1
        if i > 0:
            table[f"up.{u}.resample.conv"] = (f"up_blocks.{u}.upsamplers.0.conv",
                                              f"output_blocks.{step - 1}.{1 + cfg.up_attention[i]}.conv")
    return table


def key_map(cfg: SDUNetConfig, sdunet_keys, layout: str = "diffusers") -> dict[str, str]:
    """Foreign key -> SDUNet key for each of ``sdunet_keys`` (a state_dict's), in ``layout``."""
    require(layout in LAYOUTS, f"layout must be one of {LAYOUTS}, got {layout!r}")
    return table_key_map(module_table(cfg), LAYOUTS.index(layout), sdunet_keys, "SDUNet")


def mapped_state(shapes: dict[str, tuple], read: Callable[[str], torch.Tensor], mapping: dict[str, str],
                 expected: dict[str, torch.Size], source: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """SDUNet's state from a source of tensors (``shapes`` of its keys, ``read`` one), strictly.

    ``mapping``: source key -> SDUNet key; ``expected``: SDUNet key -> shape, in the model's order.
    """
    unused = sorted(k for k in shapes if k not in mapping)
    if unused:
        raise ValueError(f"{source}: tensor {unused[0]!r} has no place in SDUNet ({len(unused)} unused in all); "
                         f"do the weights belong to this config?")
    source_key = {ours: theirs for theirs, ours in mapping.items()}
    for ours, shape in expected.items():
        theirs = source_key[ours]
        require(theirs in shapes, f"{source}: missing tensor {theirs!r} (for SDUNet's {ours!r})")
        require(tuple(shapes[theirs]) == tuple(shape), f"{source}: tensor {theirs!r} has shape "
                f"{list(shapes[theirs])}, but SDUNet's {ours!r} needs {list(shape)}")
    state = {}
    for ours in expected:
        tensor = read(source_key[ours])
        require(tensor.is_floating_point() and bool(torch.isfinite(tensor).all()),
                f"{source}: tensor {source_key[ours]!r} is not finite floating point ({tensor.dtype})")
        state[ours] = tensor.to(dtype)
    return state


def sd_unet_from_source(cfg: SDUNetConfig, shapes: dict[str, tuple], read: Callable[[str], torch.Tensor],
                        layout: str, source: str, dtype: torch.dtype = torch.float32) -> SDUNet:
    """An SDUNet of ``cfg`` holding the source's tensors; built on the meta device, so weights are held once."""
    with torch.device("meta"):
        model = SDUNet(config=cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state = mapped_state(shapes, read, key_map(cfg, expected, layout), expected, source, dtype)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def sd_unet_from_diffusers_state(tensors: dict[str, torch.Tensor], cfg: SDUNetConfig,
                                 dtype: torch.dtype = torch.float32) -> SDUNet:
    """An SDUNet from an in-memory diffusers ``UNet2DConditionModel`` state dict."""
    return sd_unet_from_source(cfg, {k: tuple(v.shape) for k, v in tensors.items()}, tensors.__getitem__,
                               "diffusers", "diffusers UNet state", dtype)


def sd_unet_from_original_state(tensors: dict[str, torch.Tensor], cfg: SDUNetConfig,
                                prefix: str = ORIGINAL_PREFIX, dtype: torch.dtype = torch.float32) -> SDUNet:
    """An SDUNet from a single-file checkpoint's tensors in the original layout.

    Only keys under ``prefix`` are the UNet's (each must be used); the rest of the file (VAE, text
    encoders, EMA copies) belongs to other loaders. The config does not travel with such files:
    pass the family's (:data:`difflab.models.sd_unet.SD_UNET_CONFIGS`).
    """
    unet = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    require(unet, f"no tensors under {prefix!r}: not a Stable Diffusion single-file checkpoint")
    return sd_unet_from_source(cfg, {k: tuple(v.shape) for k, v in unet.items()}, unet.__getitem__,
                               "original", f"single-file UNet ({prefix}*)", dtype)


def original_from_diffusers_state(tensors: dict[str, torch.Tensor], cfg: SDUNetConfig,
                                  prefix: str = ORIGINAL_PREFIX) -> dict[str, torch.Tensor]:
    """The inverse direction: a diffusers UNet state dict renamed to the original single-file layout.

    Used by the tests to make original-layout files from diffusers models: loading its output with
    :func:`sd_unet_from_original_state` must give the network that :func:`sd_unet_from_diffusers_state`
    gives, and diffusers' own single-file converter must read it back to the same state dict.
    """
    original_name = dict(module_table(cfg).values())
    out = {}
    for key, tensor in tensors.items():
        module, _, param = key.rpartition(".")
        require(module in original_name, f"diffusers UNet state: tensor {key!r} has no place in SDUNet")
        out[f"{prefix}{original_name[module]}.{param}"] = tensor
    return out


def load_diffusers_unet(folder, dtype: torch.dtype = torch.float32, variant: str | None = None) -> SDUNet:
    """The UNet of a diffusers folder (``unet/``, or a pipeline folder holding one) as an SDUNet.

    Reads ``config.json`` (refusing settings SDUNet lacks) and the safetensors weights lazily
    (``safe_open``): shapes are checked before any tensor is read. ``variant``: e.g. ``"fp16"`` for
    ``diffusion_pytorch_model.fp16.safetensors``. Nothing runs from the folder; nothing is downloaded.
    """
    folder, config = component_folder(folder, "unet", "UNet2DConditionModel")
    cfg = SDUNetConfig.from_diffusers(config)
    files = weight_files(folder, WEIGHTS_NAME, variant)
    with contextlib.ExitStack() as stack:
        handles, shapes = {}, {}
        for path in files:
            try:
                f = stack.enter_context(safe_open(str(path), framework="pt"))
            except (SafetensorError, OSError) as e:
                raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
            for key in f.keys():
                require(key not in handles, f"{path}: tensor {key!r} is also in another shard")
                handles[key], shapes[key] = f, tuple(f.get_slice(key).get_shape())
        return sd_unet_from_source(cfg, shapes, lambda k: handles[k].get_tensor(k), "diffusers",
                                   str(files[0] if len(files) == 1 else folder), dtype)
