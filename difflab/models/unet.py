"""UNet denoiser: Ho et al. (2020) with the improvements of Dhariwal & Nichol (2021).

Levels of ResNet blocks at halving resolutions, self-attention (and cross-attention to text
tokens) at chosen levels, skip connections from the encoder to the decoder, a sinusoidal time
embedding that modulates every block's normalisation (AdaGN), an optional class embedding with
a null class for classifier-free guidance (Ho & Salimans, 2022), and a zero-initialised output
layer so a new model predicts 0. Called as the sampling core expects::

    model(x_t, t, context=None, context_mask=None, class_labels=None, pooled=None) -> prediction

``t``: float model time [B] in [0, num_train_timesteps), or a scalar broadcast to the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from difflab.models.base import ModelMixin, is_int, is_optional_int, register_model, require
from difflab.models.context_refiner import ContextRefiner
from difflab.models.layers import (AttentionBlock, ConditionEmbedding, Downsample, ResBlock, Upsample, group_norm,
                                   groups_for)


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a :class:`UNet`; written to a package's config.json."""

    in_channels: int
    out_channels: int
    channels: tuple[int, ...] = (64, 128, 128)   # width per level; level i runs at resolution / 2^i
    layers_per_block: int = 2                     # ResNet blocks per encoder level (decoder: one more)
    attention_levels: tuple[int, ...] = (1,)      # levels with (self/cross) attention
    head_dim: int = 64                            # attention head size (capped at the level's width)
    mid_attention: bool = True                    # attention between the two middle ResNet blocks
    context_dim: int | None = None                # text-token width: enables cross-attention
    pooled_dim: int | None = None                 # pooled text embedding width: added to the time embedding
    num_classes: int | None = None                # class-conditional; label num_classes is the null class
    dropout: float = 0.0
    norm_groups: int = 32
    time_embed_dim: int | None = None             # default 4 * channels[0]
    attention_positions: bool = False             # Fourier positions into every attention block's queries/keys
    guidance_embedding: bool = False              # the CFG scale is an input (guidance=w): an LCM student
    context_layers: int = 0                       # trainable transformer layers over the text tokens (0: none)
    context_width: int = 128                      # ... their width (models/context_refiner.py)

    def __post_init__(self):
        require(is_int(self.in_channels) and is_int(self.out_channels),
                f"in_channels and out_channels must be positive integers, got {self.in_channels}, {self.out_channels}")
        require(isinstance(self.channels, tuple) and len(self.channels) >= 1 and all(is_int(c) for c in self.channels),
                f"channels must be a non-empty tuple of positive integers, got {self.channels!r}")
        require(is_int(self.layers_per_block), f"layers_per_block must be >= 1, got {self.layers_per_block!r}")
        require(isinstance(self.attention_levels, tuple)
                and all(is_int(i, 0) and i < len(self.channels) for i in self.attention_levels),
                f"attention_levels must be level indices in 0..{len(self.channels) - 1}, got {self.attention_levels!r}")
        require(is_int(self.head_dim), f"head_dim must be a positive integer, got {self.head_dim!r}")
        require(isinstance(self.mid_attention, bool), f"mid_attention must be true or false, got {self.mid_attention!r}")
        for name in ("context_dim", "pooled_dim", "num_classes", "time_embed_dim"):
            require(is_optional_int(getattr(self, name)),
                    f"{name} must be a positive integer or None, got {getattr(self, name)!r}")
        require(isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1,
                f"dropout must be in [0, 1), got {self.dropout!r}")
        require(is_int(self.norm_groups), f"norm_groups must be a positive integer, got {self.norm_groups!r}")
        require(isinstance(self.attention_positions, bool),
                f"attention_positions must be true or false, got {self.attention_positions!r}")
        require(isinstance(self.guidance_embedding, bool),
                f"guidance_embedding must be true or false, got {self.guidance_embedding!r}")
        require(is_int(self.context_layers, 0) and self.context_layers <= 8,
                f"context_layers must be an integer in [0, 8], got {self.context_layers!r}")
        require(is_int(self.context_width) and self.context_width % 32 == 0,
                f"context_width must be a positive multiple of 32, got {self.context_width!r}")
        require(not self.context_layers or self.context_dim is not None,
                "context_layers needs a context_dim (text tokens to refine)")

    @property
    def embed_dim(self) -> int:
        return self.time_embed_dim or 4 * self.channels[0]


@register_model
class UNet(ConditionEmbedding, ModelMixin):
    """UNet(in_channels, out_channels, channels=(64, 128, 128), ...) or UNet(config=UNetConfig(...))."""

    config_class = UNetConfig

    def build(self, cfg: UNetConfig) -> None:
        ch, E, groups = cfg.channels, cfg.embed_dim, cfg.norm_groups
        self.init_condition_embedding(ch[0], E, cfg.num_classes, cfg.pooled_dim)   # time_mlp, class_embed, ...
        if cfg.guidance_embedding:
            self.init_guidance_embedding(ch[0], E)
        self.context_refiner = (ContextRefiner(cfg.context_dim, cfg.context_layers, cfg.context_width)
                                if cfg.context_layers else None)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)

        def level(c_in, c_out, level_index, n, skip_widths=None):
            blocks = nn.ModuleList()
            for j in range(n):
                c_block_in = (c_in if j == 0 else c_out) + (skip_widths.pop() if skip_widths else 0)
                attn = (AttentionBlock(c_out, cfg.head_dim, cfg.context_dim, groups, cfg.attention_positions)
                        if level_index in cfg.attention_levels else nn.Identity())
                blocks.append(nn.ModuleList([ResBlock(c_block_in, c_out, cfg.dropout, groups), attn]))
            return blocks

        self.down, self.downsample, skip_widths = nn.ModuleList(), nn.ModuleList(), [ch[0]]
        for i, c in enumerate(ch):
            self.down.append(level(ch[max(i - 1, 0)], c, i, cfg.layers_per_block))
            skip_widths += [c] * cfg.layers_per_block
            last = i == len(ch) - 1
            self.downsample.append(nn.Identity() if last else Downsample(c))
            skip_widths += [] if last else [c]
        self.mid_block1 = ResBlock(ch[-1], ch[-1], cfg.dropout, groups)
        self.mid_attn = (AttentionBlock(ch[-1], cfg.head_dim, cfg.context_dim, groups, cfg.attention_positions)
                         if cfg.mid_attention else None)
        self.mid_block2 = ResBlock(ch[-1], ch[-1], cfg.dropout, groups)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(ch))):
            self.up.append(level(ch[min(i + 1, len(ch) - 1)], ch[i], i, cfg.layers_per_block + 1, skip_widths))
            self.upsample.append(nn.Identity() if i == 0 else Upsample(ch[i]))
        self.norm_out = nn.GroupNorm(groups_for(ch[0], groups), ch[0])
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

        # Every ResNet block's scale/shift comes from one matmul over silu(emb), in forward order.
        self.res_blocks = self._forward_order()
        self.scale_shift = nn.Linear(E, sum(2 * b.out_channels for b in self.res_blocks))
        self.to(memory_format=torch.channels_last)

    def _forward_order(self) -> list[ResBlock]:
        blocks = [b[0] for lvl in self.down for b in lvl] + [self.mid_block1, self.mid_block2]
        return blocks + [b[0] for lvl in self.up for b in lvl]

    def check_input(self, x, context, context_mask):
        cfg, factor = self.config, 2 ** (len(self.config.channels) - 1)
        if x.dim() != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x must have shape [B, {cfg.in_channels}, H, W], got {list(x.shape)}")
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"height and width must be divisible by {factor} (2^(levels-1)), got {list(x.shape[2:])}")
        if context is not None:
            if cfg.context_dim is None:
                raise ValueError("context given, but this UNet has no context_dim (no cross-attention)")
            if context.dim() != 3 or context.shape[0] != x.shape[0] or context.shape[2] != cfg.context_dim:
                raise ValueError(f"context must have shape [{x.shape[0]}, L, {cfg.context_dim}], got {list(context.shape)}")
            if context_mask is not None and context_mask.shape != context.shape[:2]:
                raise ValueError(f"context_mask must have shape {list(context.shape[:2])}, got {list(context_mask.shape)}")

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (its total downsampling)."""
        return 2 ** (len(self.config.channels) - 1)

    def refine_context(self, context, context_mask):
        """The mask as booleans, and the tokens through the :class:`ContextRefiner` when there is one."""
        if context_mask is not None:
            context_mask = context_mask.bool()
        if context is not None and self.context_refiner is not None:
            context = self.context_refiner(context, context_mask)
        return context, context_mask

    def identity_at_init(self, name: str) -> bool:
        """Tensors that may start non-zero when the network grows from a package (``init_from``): the
        guidance embedder's and the context refiner's, whose zero output layers add nothing."""
        return name.startswith(("guidance_embed.", "context_refiner."))

    def forward(self, x, t, context=None, context_mask=None, class_labels=None, pooled=None, deep_cache=None,
                guidance=None, control_residuals=None):
        """x [B, C_in, H, W], t [B] or scalar -> [B, C_out, H, W]. ``context=None`` skips cross-attention;
        ``guidance`` [B] or scalar: the CFG scale, for a network with ``guidance_embedding``;
        ``control_residuals`` ``(skips, mid)`` from a :class:`~difflab.models.controlnet.ControlNet`: added
        to every skip connection and to the middle block's output (Zhang et al. 2023, eq. 2).

        ``deep_cache`` (a :class:`DeepCacheState`; DeepCache, Ma et al. 2024, Sec. 3.2): on a full
        call the input of the shallowest up level is stored; on a cached call only the shallowest
        down level runs, and its fresh skips meet the stored deep feature there."""
        self.check_input(x, context, context_mask)
        context, context_mask = self.refine_context(context, context_mask)
        emb = self.condition(t, x.shape[0], x.device, class_labels, pooled, guidance)   # [B, E]
        scale_shift = iter(self.scale_shift(F.silu(emb)).split([2 * b.out_channels for b in self.res_blocks], 1))
        h = self.conv_in(x.contiguous(memory_format=torch.channels_last))    # [B, ch0, H, W]
        skips = [h]
        if deep_cache is not None and control_residuals is not None:
            raise ValueError("deep_cache and a ControlNet do not combine: the cached deep feature ignores the control")
        if deep_cache is not None and deep_cache.reuse(h.shape):
            return self._shallow(h, skips, scale_shift, context, context_mask, deep_cache.feature)
        h = self._encode(h, skips, scale_shift, context, context_mask)
        if control_residuals is not None:
            extra, mid = control_residuals
            skips = [s + r for s, r in zip(skips, extra, strict=True)]
            h = h + mid
        for i, (blocks, up) in enumerate(zip(self.up, self.upsample)):
            if deep_cache is not None and i == len(self.up) - 1:
                deep_cache.store(h)                                           # the input of the shallowest up level
            h = self._up_level(blocks, up, h, skips, scale_shift, context, context_mask)
        h = self.conv_out(group_norm(h, self.norm_out, act=True))           # [B, C_out, H, W]
        return h.contiguous()

    def _encode(self, h, skips, scale_shift, context, context_mask):
        """The down levels (each output appended to ``skips``) and the middle blocks, from conv_in's output."""
        for blocks, down in zip(self.down, self.downsample):
            for res, attn in blocks:
                h = self._block(res, attn, h, next(scale_shift), context, context_mask)
                skips.append(h)
            if isinstance(down, Downsample):
                h = down(h)                                                   # [B, c, H/2, W/2]
                skips.append(h)
        h = self._block(self.mid_block1, self.mid_attn, h, next(scale_shift), context, context_mask)
        return self._block(self.mid_block2, None, h, next(scale_shift), context, context_mask)

    def _block(self, res, attn, h, scale_shift, context, context_mask):
        """One ResNet block and its level's attention, if it has one (a video UNet adds temporal layers here)."""
        h = res(h, scale_shift)
        return attn(h, context, context_mask) if isinstance(attn, AttentionBlock) else h

    def _up_level(self, blocks, up, h, skips, scale_shift, context, context_mask):
        for res, attn in blocks:
            h = self._block(res, attn, torch.cat([h, skips.pop()], dim=1), next(scale_shift), context, context_mask)
        return up(h)                                                          # [B, c, 2H, 2W]

    def _shallow(self, h, skips, scale_shift, context, context_mask, deep):
        """A cached call: the shallowest down level, then the shallowest up level on the stored feature."""
        chunks, n = list(scale_shift), self.config.layers_per_block     # per ResBlock, in forward order
        for (res, attn), chunk in zip(self.down[0], chunks[:n]):
            h = self._block(res, attn, h, chunk, context, context_mask)
            skips.append(h)
        h = self._up_level(self.up[-1], self.upsample[-1], deep, skips, iter(chunks[-(n + 1):]), context, context_mask)
        return self.conv_out(group_norm(h, self.norm_out, act=True)).contiguous()


class DeepCacheState:
    """What a UNet reuses across calls under DeepCache: the deep feature of the last full call. Every
    ``interval``-th call is a full one (1: never cached), and so is any call whose input shape differs
    from the full call's."""

    def __init__(self, interval: int):
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"deep_cache interval must be a positive integer, got {interval!r}")
        self.interval, self.calls, self.feature, self.shape = interval, 0, None, None

    def reuse(self, shape) -> bool:
        """Whether this call (input features of ``shape``) reuses the stored feature; counts the call."""
        cached = self.feature is not None and self.calls % self.interval != 0 and tuple(shape) == self.shape
        self.calls += 1
        if not cached:
            self.shape = tuple(shape)
        return cached

    def store(self, feature) -> None:
        self.feature = feature
