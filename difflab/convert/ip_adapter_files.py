"""The official IP-Adapter files for Stable Diffusion (Ye et al. 2023; tencent-ailab/IP-Adapter, published
as h94/IP-Adapter's ``models/ip-adapter_sd15.safetensors``) -> :class:`~difflab.models.ip_adapter.IPAdapter`
on an :class:`~difflab.models.sd_unet.SDUNet`, so the adapter's hooks (:func:`~difflab.models.ip_adapter.attached`)
run them. The base IP-Adapter only: one image embedding (CLIP's projected ``image_embeds``) through a
linear layer to ``T`` tokens and a LayerNorm, then a bias-free key and value projection per cross-attention::

    file                              IPAdapter
    image_proj.proj.weight / .bias    image_proj.proj     [T D, F]   ("clip_extra_context_tokens": T = 4)
    image_proj.norm.weight / .bias    image_proj.norm     [D]
    ip_adapter.{N}.to_k_ip.weight     to_kv_ip.{i}.weight rows [:C]  (W'_k, [C_i, D])
    ip_adapter.{N}.to_v_ip.weight     to_kv_ip.{i}.weight rows [C:]  (W'_v, [C_i, D])

``N`` numbers the UNet's attention layers as diffusers' ``unet.attn_processors`` lists them (the
order the original code enumerated them in): the down blocks, then the up blocks, then the middle
block; in each transformer block its self-attention then its cross-attention. Only cross-attention
is adapted, so the file's ``N`` are the odd numbers: the k-th cross-attention in that order is
``N = 2k + 1`` (SD 1.5: 16 layers, N = 1 .. 31, the middle block's last). ``i`` is the layer's place
in SDUNet's own module order (down, middle, up), which :func:`attention_numbers` maps.

Loading is strict: the file's family (only ``image_proj.proj`` / ``image_proj.norm`` and ``to_k_ip`` /
``to_v_ip`` keys; no Plus "Resampler", full-face or FaceID projection), its number of layers and its
token width are checked first, each with one line naming what did not match, then every tensor's
shape through :func:`difflab.convert.keymap.load_mapped`. Pickle files (``.bin``) are not opened; a
state dict the caller has loaded (flat, or nested ``{"image_proj": ..., "ip_adapter": ...}`` as the
``.bin`` holds it) goes through :func:`ip_adapter_from_state`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from difflab.convert.keymap import PICKLE_SUFFIXES, load_mapped, source_view
from difflab.models.base import require
from difflab.models.ip_adapter import IPAdapter, IPAdapterConfig, layer_spec
from difflab.models.sd_unet import SDUNet

IMAGE_ENCODER = "clip-vision"                    # IPAdapterConfig.image_encoder of these adapters
PARTS = ("down.", "up.", "mid_attn.")            # SDUNet's parts in diffusers' attn_processors order
PROJECTION = ("proj.weight", "proj.bias", "norm.weight", "norm.bias")    # under image_proj.
LAYER_KEY = re.compile(r"ip_adapter\.(\d+)\.(to_k_ip|to_v_ip)\.weight")
# image_proj keys of the variants that are not the base IP-Adapter, and the variant's name
VARIANTS = (("latents", "IP-Adapter Plus (a Resampler over CLIP's patch states)"),
            ("proj.0.weight", "IP-Adapter Full or FaceID (an MLP image projection)"),
            ("perceiver_resampler", "IP-Adapter FaceID Plus"))


def attention_numbers(unet: SDUNet) -> list[int]:
    """The file's ``N`` of each adapted layer of ``unet``, in SDUNet's module order (``IPAdapterConfig.layers``)."""
    names = [name for name, _ in layer_spec(unet)]
    part = lambda i: next(k for k, prefix in enumerate(PARTS) if names[i].startswith(prefix))
    diffusers_order = sorted(range(len(names)), key=part)               # stable: module order within a part
    numbers = [0] * len(names)
    for k, i in enumerate(diffusers_order):
        numbers[i] = 2 * k + 1
    return numbers


def key_map(unet: SDUNet) -> dict[str, str]:
    """File key -> IPAdapter key; the key and value projections of a layer stack into its ``to_kv_ip``
    in that order (keys first, :func:`~difflab.convert.keymap.load_mapped`)."""
    mapping = {f"image_proj.{name}": f"image_proj.{name}" for name in PROJECTION}
    for i, n in enumerate(attention_numbers(unet)):
        mapping |= {f"ip_adapter.{n}.to_k_ip.weight": f"to_kv_ip.{i}.weight",
                    f"ip_adapter.{n}.to_v_ip.weight": f"to_kv_ip.{i}.weight"}
    return mapping


def check_layout(keys: list[str], shape_of, unet: SDUNet, source: str) -> tuple[int, int]:
    """Refuse a file that is not a base IP-Adapter for ``unet``, each with one line; -> (feature_dim, num_tokens)."""
    others = [k for k in keys if not k.startswith(("image_proj.", "ip_adapter."))]
    if others:
        raise ValueError(f"{source}: not an IP-Adapter file: {others[0]!r} is neither image_proj.* nor ip_adapter.*")
    projection = sorted(k[len("image_proj."):] for k in keys if k.startswith("image_proj."))
    for marker, variant in VARIANTS:
        require(not any(k.startswith(marker) for k in projection),
                f"{source}: {variant} is not supported (image_proj.{marker}); only the base IP-Adapter loads "
                f"(image_proj.proj, image_proj.norm: ip-adapter_sd15)")
    require(projection == sorted(PROJECTION), f"{source}: image_proj holds {projection}; the base IP-Adapter's "
                                              f"is {sorted(PROJECTION)}")
    strange = [k for k in keys if k.startswith("ip_adapter.") and not LAYER_KEY.fullmatch(k)]
    if strange:
        raise ValueError(f"{source}: {strange[0]!r} is not a to_k_ip / to_v_ip weight (LoRA or other extras of "
                         f"IP-Adapter variants are not supported)")
    found = sorted({int(LAYER_KEY.fullmatch(k).group(1)) for k in keys if k.startswith("ip_adapter.")})
    wanted = sorted(attention_numbers(unet))
    if found != wanted:
        odd = sorted(set(found) - set(wanted))
        which = f"ip_adapter.{odd[0]} has no place" if odd else f"ip_adapter.{min(set(wanted) - set(found))} is missing"
        raise ValueError(f"{source}: the file adapts {len(found)} cross-attention layers, this UNet has "
                         f"{len(wanted)} (ip_adapter.1, 3, .., {wanted[-1]}); {which}: an IP-Adapter for another "
                         f"network (SD 1.x has 16 layers, SDXL 70)")
    shape = shape_of("image_proj.proj.weight")
    context_dim = unet.config.context_dim
    require(len(shape) == 2 and shape[0] % context_dim == 0,
            f"{source}: image_proj.proj.weight has shape {list(shape)}; it needs [tokens x {context_dim}, "
            f"feature_dim], {context_dim} being this UNet's text width: made for another network")
    return shape[1], shape[0] // context_dim


def ip_adapter_from_state(tensors, unet: SDUNet, source: str = "IP-Adapter state") -> IPAdapter:
    """The IPAdapter of an official IP-Adapter state for ``unet``: a dict of tensors (flat keys, or nested
    ``{"image_proj": {...}, "ip_adapter": {...}}``) or an open safetensors file; refused with one line
    when it does not fit. It is built on the meta device and receives the tensors (read once)."""
    require(type(unet) is SDUNet, f"official IP-Adapter files adapt a Stable Diffusion UNet (SDUNet), "
                                  f"got a {type(unet).__name__}")
    if isinstance(tensors, dict) and set(tensors) <= {"image_proj", "ip_adapter"}:
        tensors = {f"{part}.{k}": v for part, group in tensors.items() for k, v in group.items()}
    keys, shape_of, _ = source_view(tensors)
    require(keys, f"{source}: no tensors")
    feature_dim, num_tokens = check_layout(keys, shape_of, unet, source)
    config = IPAdapterConfig(feature_dim, unet.config.context_dim, num_tokens, layer_spec(unet), IMAGE_ENCODER)
    with torch.device("meta"):
        adapter = IPAdapter(config=config)
    load_mapped(adapter, tensors, key_map(unet), source)
    return adapter.eval().requires_grad_(False)


def load_ip_adapter_file(path, unet: SDUNet) -> IPAdapter:
    """The IPAdapter of an official ``.safetensors`` IP-Adapter file for ``unet`` (names and shapes are
    checked before a tensor is read); pickle files are refused unopened."""
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise ValueError(f"{path}: only safetensors IP-Adapter files are loaded (pickle files can run code); "
                         f"h94/IP-Adapter ships ip-adapter_sd15.safetensors beside the .bin")
    try:
        with safe_open(str(path), framework="pt") as f:
            return ip_adapter_from_state(f, unet, str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
