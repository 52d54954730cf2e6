"""IP-Adapter (Ye et al. 2023, "IP-Adapter: Text Compatible Image Prompt Adapter") for difflab's UNet and SD UNet.

An image prompt enters every cross-attention layer of a frozen UNet through a *decoupled*
cross-attention (Sec. 3.2): the layer's queries attend to the text tokens with the UNet's own
key/value projections and, separately, to a few image tokens with new ones, and the two results
are added (their eq. 5; the image branch weighted by lambda at inference, Sec. 3.3)::

    Z_new = Attention(Q, K, V) + lambda * Attention(Q, K', V'),   K' = c_i W'_k,  V' = c_i W'_v

The image tokens ``c_i`` come from an image feature through the image projection (Sec. 3.2: a
linear layer to ``num_tokens`` tokens and a LayerNorm), or, with ``grid=True``, from an encoder's
feature map, one token per cell (:class:`GridProjection`; the fine-grained features of the paper's
"plus" variant, Sec. 4.3). With ``own_query=True`` the image branch also has its own query projection
``W'_q`` (a departure from the paper, whose image branch shares the text query ``Q``): it starts as the
layer's ``W_q`` (and bias), so the adapter computes what the shared-query one does until training moves
it, and lets a place in the picture learn which image token to read. ``W'_k, W'_v`` start as the layer's text
``W_k, W_v`` (weights only: like IP-Adapter's ``to_k_ip``/``to_v_ip`` they have no bias, so all-zero
image tokens give keys and values of 0 and add exactly nothing)::

    adapter = IPAdapter.from_unet(unet, feature_dim=encoder.feature_dim)
    tokens = adapter.image_tokens(encoder(reference_images))            # [B, num_tokens, context_dim]
    with attached(unet, adapter, tokens, scale=1.0):
        prediction = unet(x_t, t, context=text_tokens)                    # B or 2B rows (CFG)

``attached`` adds the image branch with forward hooks on each adapted cross-attention (difflab UNet's
``AttentionBlock.cross``, :class:`~difflab.models.sd_unet.SDUNet`'s ``TransformerBlock.cross_attn``) and
removes them on exit, so no UNet code changes and the UNet's weights are never touched. The image
branch lives inside cross-attention: a call with ``context=None`` (no cross-attention) ignores it.
The official IP-Adapter files for Stable Diffusion load onto an SDUNet through
:mod:`difflab.convert.ip_adapter_files`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from difflab.models.base import ModelMixin, SideTraining, is_int, register_model, require
from difflab.models.layers import AttentionBlock
from difflab.models.sd_unet import SDUNet
from difflab.models.unet import UNet

ADAPTABLE = (UNet, SDUNet)


@dataclass(frozen=True)
class IPAdapterConfig:
    """The image feature's width, the UNet's text-token width, the image tokens per prompt, the UNet
    layers adapted: ``(module name, its channels)`` each (:func:`adapted_layers`), in the UNet's module
    order, the name of the image encoder whose features it reads
    (:data:`difflab.models.image_encoders.IMAGE_ENCODERS`, or ``clip-vision``), and whether it reads the
    encoder's pooled feature (``grid`` False) or its ``num_tokens`` features (``grid`` True: cells, or with the
    ``shapes-slots`` encoder the picture and one slot per object), and whether the
    image branch has its own query projection (``own_query``) or shares the layer's."""

    feature_dim: int
    context_dim: int
    num_tokens: int = 4
    layers: tuple[tuple[str, int], ...] = ()
    image_encoder: str = "shapes"
    grid: bool = False
    own_query: bool = False

    def __post_init__(self):
        for name in ("feature_dim", "context_dim", "num_tokens"):
            require(is_int(getattr(self, name)), f"{name} must be a positive integer, got {getattr(self, name)!r}")
        require(isinstance(self.layers, tuple) and len(self.layers) > 0
                and all(isinstance(layer, tuple) and len(layer) == 2 and isinstance(layer[0], str) and is_int(layer[1])
                        for layer in self.layers),
                f"layers must be a non-empty tuple of (module name, channels) pairs, got {self.layers!r}")
        require(isinstance(self.image_encoder, str) and self.image_encoder != "",
                f"image_encoder must be an image encoder's name, got {self.image_encoder!r}")
        require(isinstance(self.grid, bool), f"grid must be true or false, got {self.grid!r}")
        require(isinstance(self.own_query, bool), f"own_query must be true or false, got {self.own_query!r}")


def cross_attention_layers(model: nn.Module) -> list[tuple[str, AttentionBlock]]:
    """The cross-attention ``AttentionBlock``s of ``model`` with their module names, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, AttentionBlock) and hasattr(m, "cross")]


def adapted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The cross-attentions an IP-Adapter adapts in ``model``, in module order: ``(name, attention)``, the
    name being the AttentionBlock's in difflab's UNet and the ``cross_attn`` module's own in an SDUNet.
    Both attentions have ``heads``, ``to_q`` and ``to_out``."""
    if type(model) is UNet:
        return [(name, block.cross) for name, block in cross_attention_layers(model)]
    if type(model) is SDUNet:
        return [(name, m) for name, m in model.named_modules() if name.endswith("cross_attn")]
    return []


def layer_spec(model: nn.Module) -> tuple[tuple[str, int], ...]:
    """``IPAdapterConfig.layers`` of ``model``: (name, channels) of each adapted cross-attention."""
    return tuple((name, attention.to_out.out_features) for name, attention in adapted_layers(model))


def text_kv_weight(attention: nn.Module) -> torch.Tensor:
    """The layer's text ``[W_k; W_v]`` [2C, context_dim]: fused in difflab's UNet, two Linears in an SDUNet."""
    if hasattr(attention, "to_kv"):
        return attention.to_kv.weight
    return torch.cat([attention.to_k.weight, attention.to_v.weight])


class ImageProjection(nn.Module):
    """Image feature [B, F] -> image tokens [B, T, D]: ``LayerNorm(reshape(W f + b))`` (Ye et al. 2023, Sec. 3.2)."""

    def __init__(self, feature_dim: int, context_dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.proj = nn.Linear(feature_dim, num_tokens * context_dim)
        self.norm = nn.LayerNorm(context_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(features).reshape(features.shape[0], self.num_tokens, -1)   # [B, T, D]
        return self.norm(tokens)


class GridProjection(nn.Module):
    """Cell features [B, T, F] -> image tokens [B, T, D]: ``LayerNorm(W f_i + b + p_i)``, one token per cell
    with a learned position ``p_i``, so a token says what lies in its cell and where the cell is. The
    paper's "plus" variant reads patch features through a query resampler (Ye et al. 2023, Sec. 4.3);
    with 16 cells a shared linear map keeps one token per cell instead."""

    def __init__(self, feature_dim: int, context_dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.proj = nn.Linear(feature_dim, context_dim)
        self.position = nn.Parameter(torch.randn(num_tokens, context_dim) * 0.02)
        self.norm = nn.LayerNorm(context_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(features) + self.position)                # [B, T, D]


@register_model
class IPAdapter(ModelMixin):
    """IPAdapter(config=IPAdapterConfig(...)); build one for a UNet with :meth:`from_unet`.

    Weights: ``image_proj.{proj,norm}`` (and ``image_proj.position`` [T, D] with ``grid``) and ``to_kv_ip.{i}.weight``
    [2 C_i, context_dim], the fused image key/value projection of ``config.layers[i]`` (keys first, as
    ``Attention.to_kv``); with ``own_query`` also ``to_q_ip.{i}.{weight,bias}`` [C_i, C_i], [C_i].
    """

    config_class = IPAdapterConfig

    def build(self, cfg: IPAdapterConfig) -> None:
        self.image_proj = (GridProjection if cfg.grid else ImageProjection)(cfg.feature_dim, cfg.context_dim,
                                                                            cfg.num_tokens)
        self.to_kv_ip = nn.ModuleList(nn.Linear(cfg.context_dim, 2 * channels, bias=False)
                                      for _, channels in cfg.layers)
        if cfg.own_query:
            self.to_q_ip = nn.ModuleList(nn.Linear(channels, channels) for _, channels in cfg.layers)

    @classmethod
    def from_unet(cls, unet: UNet | SDUNet, feature_dim: int, num_tokens: int = 4,
                  image_encoder: str = "shapes", grid: bool = False, own_query: bool = False) -> "IPAdapter":
        """An adapter for every cross-attention layer of ``unet``, its ``W'_k, W'_v`` copied from the
        layer's ``W_k, W_v`` (Sec. 3.2); the image projection is freshly initialised. ``grid``: it reads
        ``num_tokens`` cell features (the encoder's ``grid_tokens``), one token each; ``own_query``: the image
        branch's own ``W'_q``, copied from the layer's ``W_q`` (its bias, or zero where the layer has none)."""
        require(type(unet) in ADAPTABLE, f"an IP-Adapter is built for difflab's UNet or SDUNet, got a "
                                         f"{type(unet).__name__}")
        layers = adapted_layers(unet)
        require(len(layers) > 0, "this UNet has no cross-attention (no context_dim): an IP-Adapter has nothing "
                                 "to attach to")
        adapter = cls(config=IPAdapterConfig(feature_dim, unet.config.context_dim, num_tokens, layer_spec(unet),
                                             image_encoder, grid, own_query))
        with torch.no_grad():
            for i, (kv_ip, (_, attention)) in enumerate(zip(adapter.to_kv_ip, layers)):
                kv_ip.weight.copy_(text_kv_weight(attention))
                if own_query:
                    q_ip, bias = adapter.to_q_ip[i], attention.to_q.bias
                    q_ip.weight.copy_(attention.to_q.weight)
                    q_ip.bias.copy_(bias if bias is not None else torch.zeros_like(q_ip.bias))
        return adapter.to(next(unet.parameters()).device)

    def steers(self, model) -> bool:
        """Whether this adapter was made for ``model``: a UNet (or SDUNet) with the same cross-attention
        layers (names, channels) and text-token width."""
        return (type(model) in ADAPTABLE and layer_spec(model) == self.config.layers
                and model.config.context_dim == self.config.context_dim)

    def image_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Image features [B, feature_dim] (an image encoder's; with ``grid``, its cells [B, num_tokens,
        feature_dim]) -> image tokens [B, num_tokens, context_dim]."""
        cfg = self.config
        wanted = (cfg.num_tokens, cfg.feature_dim) if cfg.grid else (cfg.feature_dim,)
        if not isinstance(features, torch.Tensor) or tuple(features.shape[1:]) != wanted:
            shape = list(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            what = "its cell features" if cfg.grid else "the image encoder's feature_dim"
            raise ValueError(f"image features must be a tensor [B, {', '.join(map(str, wanted))}] ({what}), "
                             f"got {shape}")
        return self.image_proj(features.to(self.image_proj.proj.weight.dtype))

    def check_tokens(self, tokens) -> None:
        """Refuse image tokens that are not [B, num_tokens, context_dim] floats."""
        cfg = self.config
        if (not isinstance(tokens, torch.Tensor) or tokens.dim() != 3 or not tokens.is_floating_point()
                or tuple(tokens.shape[1:]) != (cfg.num_tokens, cfg.context_dim)):
            shape = list(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"image tokens must be a float tensor [B, {cfg.num_tokens}, {cfg.context_dim}] "
                             f"(IPAdapter.image_tokens), got {shape}")


def decoupled_attention(cross: nn.Module, kv_ip: nn.Linear, x: torch.Tensor, tokens: torch.Tensor,
                        q_ip: nn.Linear | None = None):
    """``W_out Attention(Q, K', V')`` of one layer, without ``W_out``'s bias (the text branch has added it):
    ``Q = x W_q (+ b_q)`` by the layer's own query projection (or by ``q_ip``, the adapter's own ``W'_q``),
    ``K', V' = tokens W'_k, tokens W'_v``.
    ``x`` [B, N, C] (the layer's input), tokens [B, T, D] -> [B, N, C]."""
    B, N, C = x.shape
    heads = lambda z: z.reshape(B, z.shape[1], cross.heads, C // cross.heads).transpose(1, 2)  # [B, h, L, d]
    k, v = kv_ip(tokens.to(kv_ip.weight.dtype)).chunk(2, dim=-1)              # [B, T, C] each
    q = (cross.to_q if q_ip is None else q_ip)(x)                            # [B, N, C]
    h = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))          # [B, h, N, d]
    return F.linear(h.transpose(1, 2).reshape(B, N, C), cross.to_out.weight)  # [B, N, C]


def batch_tokens(tokens: torch.Tensor, batch: int) -> torch.Tensor:
    """Image tokens for a UNet batch of ``batch`` rows: as they are, or repeated when the batch holds
    copies of the prompts' batch (classifier-free guidance stacks the conditional and unconditional
    halves, :func:`difflab.guidance.merge_batches`), as a ControlNet's control image is."""
    if tokens.shape[0] == batch:
        return tokens
    if batch % tokens.shape[0]:
        raise ValueError(f"image tokens for {tokens.shape[0]} images cannot cover a UNet batch of {batch}: "
                         f"pass one set per image, or per row of the batch")
    return tokens.repeat(batch // tokens.shape[0], 1, 1)


@contextmanager
def attached(unet: UNet | SDUNet, adapter: IPAdapter, tokens: torch.Tensor, scale: float = 1.0):
    """Within the block, ``unet``'s adapted cross-attention layers output ``Z + scale * W_out Attention(Q, K', V')``
    (eq. 5, lambda = ``scale``) for image ``tokens`` [B or batch, num_tokens, context_dim], ``Z`` being the
    layer's own output. Scale 0, or all-zero tokens, leave the UNet's output exactly as it is without the
    adapter; on exit the hooks are removed. The image branch is added whatever the text mask: a row whose
    text has no valid token (its text branch is 0) still sees the image prompt."""
    if not adapter.steers(unet):
        names = [name for name, _ in adapter.config.layers]
        raise ValueError(f"this IP-Adapter was made for another network (layers {names}, context_dim "
                         f"{adapter.config.context_dim}); build one for this UNet with IPAdapter.from_unet(unet)")
    adapter.check_tokens(tokens)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number (lambda; 0 turns the image prompt off), got {scale!r}")

    def hook(cross, args, output, kv_ip, q_ip):
        x = args[0]                                                           # the layer's input [B, N, C]
        return output + scale * decoupled_attention(cross, kv_ip, x, batch_tokens(tokens, x.shape[0]), q_ip)

    queries = adapter.to_q_ip if adapter.config.own_query else [None] * len(adapter.to_kv_ip)
    layers = zip(adapted_layers(unet), adapter.to_kv_ip, queries) if scale != 0 else ()
    handles = []
    try:
        for (_, cross), kv_ip, q_ip in layers:
            handles.append(cross.register_forward_hook(partial(hook, kv_ip=kv_ip, q_ip=q_ip)))
        yield unet
    finally:
        for handle in handles:
            handle.remove()


class IPAdaptedUNet(SideTraining):
    """The network an IP-Adapter trains in: the frozen UNet and the adapter (``adapter``), fed the
    batch's image features ``[B, feature_dim]`` (``control``)."""

    side_name = "adapter"

    def forward(self, x, t, **cond):
        with attached(self.unet, self.adapter, self.adapter.image_tokens(self.side_input())):
            return self.unet(x, t, **cond)
