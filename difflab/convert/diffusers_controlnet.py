"""diffusers ControlNet folders (SD 1.x/2.x, SDXL) -> :class:`~difflab.models.sd_controlnet.SDControlNet`.

A folder of diffusers' ``ControlNetModel`` (``config.json``, ``diffusion_pytorch_model.safetensors``),
as ``save_pretrained`` writes it and the published ControlNets ship. The encoder copy has the SD UNet's
names on both sides, so the UNet's table (:func:`difflab.convert.diffusers_unet.module_table`) names
it; the ControlNet's own modules add::

    SDControlNet          diffusers ControlNetModel
    hint.conv_in          controlnet_cond_embedding.conv_in
    hint.blocks.k         controlnet_cond_embedding.blocks.k
    hint.conv_out         controlnet_cond_embedding.conv_out
    zero_convs.k          controlnet_down_blocks.k
    zero_mid              controlnet_mid_block

Loading is strict (:func:`difflab.convert.keymap.load_mapped`): every tensor of the file is used,
every parameter filled, every shape checked before a tensor is read; pickle weights are refused.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from difflab.convert.diffusers_unet import WEIGHTS_NAME, module_table
from difflab.convert.keymap import load_mapped, read_json_object, table_key_map, weight_files
from difflab.models.base import require
from difflab.models.sd_controlnet import SDControlNet, SDControlNetConfig

CLASS_NAME = "ControlNetModel"


def is_diffusers_controlnet(folder) -> bool:
    """Whether ``folder`` holds a diffusers ControlNet: a ``config.json`` whose ``_class_name`` is
    ControlNetModel, and ``diffusion_pytorch_model.safetensors``."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / f"{WEIGHTS_NAME}.safetensors").is_file():
        return False
    try:
        return read_json_object(folder / "config.json").get("_class_name") == CLASS_NAME
    except ValueError:
        return False


def key_map(cfg: SDControlNetConfig, model_keys) -> dict[str, str]:
    """diffusers ControlNetModel key -> SDControlNet key for each of ``model_keys`` (a state_dict's)."""
    hint = ["conv_in", "conv_out", *(f"blocks.{k}" for k in range(2 * (len(cfg.hint_channels) - 1)))]
    own = {f"hint.{name}": f"controlnet_cond_embedding.{name}" for name in hint}
    own |= {f"zero_convs.{k}": f"controlnet_down_blocks.{k}"          # one per skip feature
            for k in range(len(cfg.channels) * (cfg.layers_per_block + 1))}
    own["zero_mid"] = "controlnet_mid_block"
    table = module_table(cfg) | {ours: (theirs,) for ours, theirs in own.items()}  # the encoder: the UNet's names
    return table_key_map(table, 0, model_keys, "SDControlNet")


def load_diffusers_controlnet(folder, dtype: torch.dtype = torch.float32, steering=None) -> SDControlNet:
    """The ControlNet of a diffusers ``ControlNetModel`` folder as an SDControlNet.

    Reads ``config.json`` (refusing settings SDControlNet lacks) and the safetensors weights lazily:
    names and shapes are checked before any tensor is read. ``steering``: the SDUNet it is for; a
    ControlNet made for another is refused before any tensor is read. Nothing runs from the folder."""
    folder = Path(folder)
    config = read_json_object(folder / "config.json")
    require(config.get("_class_name") == CLASS_NAME,
            f"{folder / 'config.json'} describes {config.get('_class_name')!r}, not a diffusers {CLASS_NAME}")
    cfg = SDControlNetConfig.from_diffusers(config)
    files = weight_files(folder, WEIGHTS_NAME)                             # pickle weights are refused
    require(len(files) == 1, f"{folder}: sharded ControlNet weights ({len(files)} files) are not read; "
                             f"{WEIGHTS_NAME}.safetensors is")
    path = files[0]
    with torch.device("meta"):
        net = SDControlNet(config=cfg).to(dtype)
    if steering is not None and net.mismatch(steering):
        raise ValueError(f"the ControlNet in {folder} was made for another network: {net.mismatch(steering)}")
    try:
        with safe_open(str(path), framework="pt") as f:
            load_mapped(net, f, key_map(cfg, net.state_dict()), str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
    return net.eval()
