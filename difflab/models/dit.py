"""Diffusion Transformer, Peebles & Xie (2023), "Scalable Diffusion Models with Transformers".

Patchify -> tokens + fixed 2-D sin-cos positions -> N adaLN-Zero blocks conditioned on
``c = time embedding (+ class embedding) (+ pooled text)`` -> adaLN final layer -> unpatchify.
Optional cross-attention to text tokens after each self-attention, as in PixArt-alpha
(Chen et al., 2023). Positions are computed for the input's grid, so any resolution divisible
by the patch size works. Called as every difflab network::

    model(x_t, t, context=None, context_mask=None, class_labels=None, pooled=None) -> prediction
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from difflab.models.base import ModelMixin, is_int, is_optional_int, register_model, require
from difflab.models.block_cache import run_blocks
from difflab.models.layers import Attention, ConditionEmbedding

# Named sizes: DiT-S/B/L/XL from the paper (Table 1), plus T and XS that train on a CPU.
DIT_SIZES = {
    "DiT-T": dict(depth=4, hidden_size=128, num_heads=4),
    "DiT-XS": dict(depth=6, hidden_size=192, num_heads=3),
    "DiT-S": dict(depth=12, hidden_size=384, num_heads=6),
    "DiT-B": dict(depth=12, hidden_size=768, num_heads=12),
    "DiT-L": dict(depth=24, hidden_size=1024, num_heads=16),
    "DiT-XL": dict(depth=28, hidden_size=1152, num_heads=16),
}


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of a :class:`DiT`; written to a package's config.json."""

    in_channels: int = 4
    out_channels: int | None = None          # default: in_channels
    patch_size: int = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int | None = None           # class-conditional; label num_classes is the null class
    pooled_dim: int | None = None            # pooled text embedding, added to the conditioning vector
    context_dim: int | None = None           # text-token width: enables cross-attention
    frequency_dim: int = 256                 # width of the sinusoidal time features

    def __post_init__(self):
        for name in ("in_channels", "patch_size", "hidden_size", "depth", "num_heads", "frequency_dim"):
            require(is_int(getattr(self, name)), f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("out_channels", "num_classes", "pooled_dim", "context_dim"):
            require(is_optional_int(getattr(self, name)), f"{name} must be a positive integer or None, got {getattr(self, name)!r}")
        require(self.hidden_size % self.num_heads == 0,
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        require(self.hidden_size % 4 == 0, f"hidden_size must be divisible by 4 (2-D sin-cos positions), got {self.hidden_size}")
        require(isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0, f"mlp_ratio must be > 0, got {self.mlp_ratio!r}")

    @property
    def output_channels(self) -> int:
        return self.out_channels or self.in_channels


@lru_cache(maxsize=16)
def sincos_positions_2d(dim: int, height: int, width: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions [H*W, dim]: half the channels encode the row, half the column.

    Each half is the 1-D encoding of Vaswani et al. (2017) sec. 3.5 with frequencies
    ``w_i = 10000^(-i / (dim/4))``, as used by MAE and DiT.
    """
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # [dim/4]
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                                torch.arange(width, dtype=torch.float64), indexing="ij")
    enc = lambda pos: torch.cat([torch.sin(pos.reshape(-1, 1) * omega), torch.cos(pos.reshape(-1, 1) * omega)], 1)
    return torch.cat([enc(rows), enc(cols)], dim=1).float()                       # [H*W, dim]


def modulate(x, shift, scale):
    """adaLN: LN(x) * (1 + scale) + shift, with shift/scale [B, D] broadcast over tokens."""
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None])


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block (Peebles & Xie, 2023, sec. 3.2, Fig. 3)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, context_dim: int | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, dim // heads)
        self.cross = Attention(dim, dim // heads, context_dim=context_dim) if context_dim else None
        self.norm_cross = nn.LayerNorm(dim, eps=1e-6) if context_dim else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Linear(dim, 6 * dim)              # zero-initialised by DiT: every block starts as identity

    def forward(self, x, c, context=None, context_mask=None):
        # x [B, N, D], c [B, D]
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=1)  # each [B, D]
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        if self.cross is not None and context is not None:
            x = x + self.cross(self.norm_cross(x), context, context_mask)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


@register_model
class DiT(ConditionEmbedding, ModelMixin):
    """DiT(in_channels=4, patch_size=2, hidden_size=384, depth=12, ...) or DiT.from_size("DiT-S", ...)."""

    config_class = DiTConfig

    def build(self, cfg: DiTConfig) -> None:
        D, p = cfg.hidden_size, cfg.patch_size
        self.patchify = nn.Conv2d(cfg.in_channels, D, p, stride=p)
        self.init_condition_embedding(cfg.frequency_dim, D, cfg.num_classes, cfg.pooled_dim)
        self.blocks = nn.ModuleList(DiTBlock(D, cfg.num_heads, cfg.mlp_ratio, cfg.context_dim) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(D, 2 * D)
        self.proj_out = nn.Linear(D, p * p * cfg.output_channels)
        self._init_weights()

    def _init_weights(self):
        """Xavier linears, N(0, 0.02) embeddings, zero adaLN and output (DiT sec. 3.2, adaLN-Zero)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias) if m.bias is not None else None
        nn.init.xavier_uniform_(self.patchify.weight.view(self.patchify.weight.shape[0], -1))
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=0.02)
        for layer in [b.ada for b in self.blocks] + [self.ada_out, self.proj_out]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @classmethod
    def from_size(cls, name: str, **kwargs) -> "DiT":
        """A named size from :data:`DIT_SIZES` (e.g. "DiT-S"), other config fields as keywords."""
        if name not in DIT_SIZES:
            raise ValueError(f"unknown DiT size {name!r}; known: {list(DIT_SIZES)}")
        return cls(**{**DIT_SIZES[name], **kwargs})

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (its patch size)."""
        return self.config.patch_size

    def forward(self, x, t, context=None, context_mask=None, class_labels=None, pooled=None, block_cache=None):
        """x [B, C, H, W], t [B] or scalar -> [B, C_out, H, W]. ``block_cache``: a
        :class:`~difflab.models.block_cache.BlockCacheState` (first-block caching)."""
        cfg, p = self.config, self.config.patch_size
        if x.dim() != 4 or x.shape[1] != cfg.in_channels or x.shape[2] % p or x.shape[3] % p:
            raise ValueError(f"x must have shape [B, {cfg.in_channels}, H, W] with H and W divisible by "
                             f"patch_size={p}, got {list(x.shape)}")
        if context is not None and (cfg.context_dim is None or context.dim() != 3 or context.shape[-1] != cfg.context_dim):
            raise ValueError(f"context must have shape [B, L, {cfg.context_dim}] (context_dim); got "
                             f"{list(context.shape)}")
        B, _, H, W = x.shape
        h, w = H // p, W // p
        c = self.condition(t, B, x.device, class_labels, pooled)                       # [B, D]
        tokens = self.patchify(x).flatten(2).transpose(1, 2)                           # [B, h*w, D]
        tokens = tokens + sincos_positions_2d(cfg.hidden_size, h, w).to(tokens.device)
        mask = context_mask.bool() if context_mask is not None else None
        def rest(tokens, _):
            for block in self.blocks[1:]:
                tokens = block(tokens, c, context, mask)                              # [B, h*w, D]
            return tokens
        tokens = run_blocks(tokens, lambda x: (self.blocks[0](x, c, context, mask), None), rest, block_cache)
        shift, scale = self.ada_out(F.silu(c)).chunk(2, dim=1)
        out = self.proj_out(modulate(self.norm_out(tokens), shift, scale))            # [B, h*w, p*p*C]
        out = out.view(B, h, w, p, p, cfg.output_channels)
        return out.permute(0, 5, 1, 3, 2, 4).reshape(B, cfg.output_channels, H, W)    # [B, C, H, W]
