"""The multimodal diffusion transformer (MMDiT) of Stable Diffusion 3, Esser et al. (2024), "Scaling
Rectified Flow Transformers for High-Resolution Image Synthesis", Sec. 4 and Fig. 2.

Text tokens and image patches keep separate weights (two *streams*) but meet in one attention over
their concatenated sequence, so each stream reads the other at every layer. Each stream of a block
is modulated by adaLN-Zero (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers",
Sec. 3.2) from one conditioning vector ``c = MLP(time features) + MLP(pooled text)``::

    patches  --patchify + positions-->  x [B, N, D] --+                +--> x + gate * out(attn_x) --> MLP_x
                                                      |-- attention ---|
    text [B, L, context_dim] --linear--> c [B, L, D] -+  over (c ; x)  +--> c + gate * out(attn_c) --> MLP_c

The last block's text stream is "pre-only": its tokens feed the keys and values of the final
attention but its own update would never be read, so it has no output projection, no MLP and only
a shift/scale modulation. ``qk_norm="rms_norm"`` (SD3.5) normalises every head's queries and keys
(RMS norm, Zhang & Sennrich 2019) before the dot product. Called as::

    model(x, t, context, pooled, context_mask=None) -> prediction [B, C_out, H, W]

``t`` is model time in [0, 1000]: 1000 times the flow time (``x_t = (1 - t) x0 + t eps``), which is
what difflab's ``NoiseSchedule.flow`` hands a network (``schedule.t(sigma)``) and what SD3 was trained
on (diffusers' scheduler timesteps are ``sigma * 1000``); the network does no rescaling of its own.
Positions come from SD3's fixed ``pos_embed_max_size`` square grid of sin-cos codes, cropped around
its centre to the input's patch grid, so any size up to the grid's works. Weights are laid out as
diffusers stores them (:mod:`difflab.convert.diffusers_sd3`); in particular the two-way modulations
(final layer, pre-only text stream) are ``(scale, shift)``, where the original SD3 files store
``(shift, scale)``. SD3.5 Medium's extra image-only attention (``dual_attention_layers``) is not
built yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from difflab.models.base import ModelMixin, is_int, is_optional_int, register_model, require
from difflab.models.block_cache import run_blocks
from difflab.models.dit import modulate
from difflab.models.layers import broadcast_time
from difflab.models.sd_unet import mlp, time_features

QK_NORMS = (None, "rms_norm")
# diffusers SD3Transformer2DModel config keys MMDiT reads; anything else is refused by name.
_READ = ("sample_size", "patch_size", "in_channels", "num_layers", "attention_head_dim", "num_attention_heads",
         "joint_attention_dim", "caption_projection_dim", "pooled_projection_dim", "out_channels",
         "pos_embed_max_size", "dual_attention_layers", "qk_norm")


@dataclass(frozen=True)
class MMDiTConfig:
    """Architecture of an :class:`MMDiT`; the defaults are SD3 Medium's."""

    in_channels: int = 16
    out_channels: int | None = None          # default: in_channels
    patch_size: int = 2
    hidden_size: int = 1536                  # both streams' width (heads x head size)
    depth: int = 24                          # joint blocks
    num_heads: int = 24
    mlp_ratio: float = 4.0
    context_dim: int = 4096                  # width of the text tokens fed in (joint_attention_dim)
    pooled_dim: int = 2048                   # width of the pooled text vector
    pos_embed_max_size: int = 192            # side of the stored position grid, in patches
    sample_size: int = 128                   # latent side trained at: positions advance sample_size/p/grid per patch
    qk_norm: str | None = None               # None, or "rms_norm" (SD3.5)
    frequency_dim: int = 256                 # width of the sinusoidal time features

    def __post_init__(self):
        for name in ("in_channels", "patch_size", "hidden_size", "depth", "num_heads", "context_dim", "pooled_dim",
                     "pos_embed_max_size", "sample_size", "frequency_dim"):
            require(is_int(getattr(self, name)), f"{name} must be a positive integer, got {getattr(self, name)!r}")
        require(is_optional_int(self.out_channels),
                f"out_channels must be a positive integer or None, got {self.out_channels!r}")
        require(self.hidden_size % self.num_heads == 0,
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        require(self.hidden_size % 4 == 0, f"hidden_size must be divisible by 4 (2-D sin-cos positions), "
                                           f"got {self.hidden_size}")
        require(self.sample_size >= self.patch_size,
                f"sample_size ({self.sample_size}) must be at least patch_size ({self.patch_size})")
        require(isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0,
                f"mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        require(self.qk_norm in QK_NORMS, f"qk_norm must be one of {QK_NORMS}, got {self.qk_norm!r}")

    @property
    def output_channels(self) -> int:
        return self.out_channels or self.in_channels

    @classmethod
    def from_diffusers(cls, config: dict) -> MMDiTConfig:
        """The config of a diffusers ``SD3Transformer2DModel`` (its ``transformer/config.json``),
        refusing, one line each, what MMDiT does not build."""
        require(isinstance(config, dict), f"a diffusers SD3 transformer config must be a JSON object, "
                                          f"got {type(config).__name__}")
        c = {k: v for k, v in config.items() if not k.startswith("_")}
        what = "diffusers SD3 transformer config"
        unknown = sorted(set(c) - set(_READ))
        require(not unknown, f"{what}: unknown key(s) {unknown}; MMDiT reads {sorted(_READ)}")
        dual = c.get("dual_attention_layers") or ()
        require(not dual, f"{what}: dual_attention_layers={list(dual)} (SD3.5 Medium's extra image-only "
                          f"attention) is not supported yet; SD3 and SD3.5 Large folders load")
        heads, head_dim = c.get("num_attention_heads", 18), c.get("attention_head_dim", 64)
        require(is_int(heads) and is_int(head_dim), f"{what}: num_attention_heads and attention_head_dim must be "
                                                    f"positive integers, got {heads!r}, {head_dim!r}")
        caption = c.get("caption_projection_dim", 1152)
        require(caption == heads * head_dim, f"{what}: caption_projection_dim={caption!r} must equal "
                f"num_attention_heads x attention_head_dim = {heads * head_dim} (both streams share one width)")
        require(c.get("pos_embed_max_size", 96) is not None,
                f"{what}: pos_embed_max_size=null is not supported (SD3 crops a stored grid)")
        try:
            return cls(in_channels=c.get("in_channels", 16), out_channels=c.get("out_channels", 16),
                       patch_size=c.get("patch_size", 2), hidden_size=heads * head_dim,
                       depth=c.get("num_layers", 18), num_heads=heads, context_dim=c.get("joint_attention_dim", 4096),
                       pooled_dim=c.get("pooled_projection_dim", 2048),
                       pos_embed_max_size=c.get("pos_embed_max_size", 96), sample_size=c.get("sample_size", 128),
                       qk_norm=c.get("qk_norm"))
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None


def position_grid(dim: int, grid: int, base: int) -> torch.Tensor:
    """SD3's fixed positions [grid*grid, dim] of a ``grid`` x ``grid`` patch square (row-major).

    The 1-D code of Vaswani et al. (2017) sec. 3.5, ``[sin(p w_i), cos(p w_i)]`` with
    ``w_i = 10000^(-i / (dim/4))``, of the column (first half of the channels) and the row (second
    half), at positions ``p = index * base / grid``: the grid spans the ``base`` patches of the
    training size, so a patch at the training size's centre keeps its code at every crop.
    """
    pos = (torch.arange(grid, dtype=torch.float32) / (grid / base)).double()      # [grid]
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # [dim/4]
    code = torch.cat([torch.sin(pos[:, None] * omega), torch.cos(pos[:, None] * omega)], 1)  # [grid, dim/2]
    cols = code[None, :, :].expand(grid, grid, -1)                                # [grid, grid, dim/2]
    rows = code[:, None, :].expand(grid, grid, -1)                                # [grid, grid, dim/2]
    return torch.cat([cols, rows], -1).reshape(grid * grid, dim).float()          # [grid*grid, dim]


class Stream(nn.Module):
    """One modality's half of a joint block: its adaLN modulation, q/k/v and output projections, MLP.

    ``pre_only``: only the attention input is made (shift and scale, no gates, no output side).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: str | None, pre_only: bool = False):
        super().__init__()
        self.heads, self.pre_only = heads, pre_only
        self.ada = nn.Linear(dim, (2 if pre_only else 6) * dim)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(dim // heads, eps=1e-6) if qk_norm else None
        self.k_norm = nn.RMSNorm(dim // heads, eps=1e-6) if qk_norm else None
        if not pre_only:
            hidden = int(dim * mlp_ratio)
            self.out = nn.Linear(dim, dim)
            self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def pre(self, x: torch.Tensor, c: torch.Tensor):
        """x [B, n, D], c [B, D] -> q, k, v [B, h, n, d] each, and the modulation for :meth:`post`."""
        B, n, D = x.shape
        if self.pre_only:
            scale, shift = self.ada(F.silu(c)).chunk(2, dim=1)                      # each [B, D]
            mods = None
        else:
            shift, scale, *mods = self.ada(F.silu(c)).chunk(6, dim=1)               # each [B, D]
        qkv = self.qkv(modulate(self.norm1(x), shift, scale))                       # [B, n, 3D]
        q, k, v = qkv.view(B, n, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4).unbind(0)  # [B, h, n, d]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)                                   # [B, h, n, d]
        return q, k, v, mods

    def post(self, x: torch.Tensor, attended: torch.Tensor, mods) -> torch.Tensor:
        """The residual updates of this stream: x [B, n, D], attention output [B, n, D] -> [B, n, D]."""
        gate1, shift2, scale2, gate2 = mods                                         # each [B, D]
        x = x + gate1[:, None] * self.out(attended)                                 # [B, n, D]
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))  # [B, n, D]


class JointBlock(nn.Module):
    """An MMDiT block (Esser et al. 2024, Fig. 2b): two streams, one attention over text and image."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: str | None, context_pre_only: bool):
        super().__init__()
        self.image = Stream(dim, heads, mlp_ratio, qk_norm)
        self.text = Stream(dim, heads, mlp_ratio, qk_norm, pre_only=context_pre_only)

    def forward(self, x, context, c, mask=None):
        """x [B, N, D] patches, context [B, L, D] text, c [B, D], mask [B, 1, 1, L+N] or None."""
        B, N, D = x.shape
        L = context.shape[1]
        qt, kt, vt, mods_t = self.text.pre(context, c)                              # [B, h, L, d] each
        qx, kx, vx, mods_x = self.image.pre(x, c)                                   # [B, h, N, d] each
        q, k, v = (torch.cat(pair, dim=2) for pair in ((qt, qx), (kt, kx), (vt, vx)))  # [B, h, L+N, d]
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)                 # [B, h, L+N, d]
        h = h.transpose(1, 2).reshape(B, L + N, D)                                  # [B, L+N, D]
        x = self.image.post(x, h[:, L:], mods_x)                                    # [B, N, D]
        context = None if self.text.pre_only else self.text.post(context, h[:, :L], mods_t)  # [B, L, D]
        return x, context


@register_model
class MMDiT(ModelMixin):
    """MMDiT(in_channels=16, hidden_size=1536, depth=24, num_heads=24, ...); see the module docstring."""

    config_class = MMDiTConfig

    def build(self, cfg: MMDiTConfig) -> None:
        D, p = cfg.hidden_size, cfg.patch_size
        self.patchify = nn.Conv2d(cfg.in_channels, D, p, stride=p)
        # A stored buffer [1, M*M, D], as SD3's files hold it; equal to position_grid() for the published models.
        self.register_buffer("pos_grid", position_grid(D, cfg.pos_embed_max_size, cfg.sample_size // p)[None])
        self.time_mlp = mlp(cfg.frequency_dim, D)
        self.pooled_mlp = mlp(cfg.pooled_dim, D)
        self.context_proj = nn.Linear(cfg.context_dim, D)
        self.blocks = nn.ModuleList(JointBlock(D, cfg.num_heads, cfg.mlp_ratio, cfg.qk_norm, i == cfg.depth - 1)
                                    for i in range(cfg.depth))
        self.norm_out = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(D, 2 * D)
        self.proj_out = nn.Linear(D, p * p * cfg.output_channels)
        self._init_weights()

    def _init_weights(self):
        """Xavier linears and patchify, zero adaLN and output layers (adaLN-Zero: every block starts
        as the identity; Peebles & Xie 2023, Sec. 3.2)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patchify.weight.view(self.patchify.weight.shape[0], -1))
        for layer in [s.ada for b in self.blocks for s in (b.image, b.text)] + [self.ada_out, self.proj_out]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (its patch size)."""
        return self.config.patch_size

    def positions(self, h: int, w: int) -> torch.Tensor:
        """The centre h x w crop of the stored grid -> [h*w, D]."""
        M = self.config.pos_embed_max_size
        top, left = (M - h) // 2, (M - w) // 2
        return self.pos_grid.view(M, M, -1)[top:top + h, left:left + w].reshape(h * w, -1)

    def check_input(self, x, context, pooled, context_mask) -> None:
        cfg, p, M = self.config, self.config.patch_size, self.config.pos_embed_max_size
        require(x.dim() == 4 and x.shape[1] == cfg.in_channels and x.shape[2] % p == 0 and x.shape[3] % p == 0,
                f"x must have shape [B, {cfg.in_channels}, H, W] with H and W multiples of patch_size={p}, "
                f"got {list(x.shape)}")
        require(x.shape[2] <= M * p and x.shape[3] <= M * p,
                f"x is {x.shape[2]}x{x.shape[3]}, larger than the position grid's {M * p}x{M * p} "
                f"(pos_embed_max_size={M} patches of {p})")
        B = x.shape[0]
        require(context is not None and context.dim() == 3 and context.shape[0] == B
                and context.shape[2] == cfg.context_dim,
                f"context must have shape [{B}, L, {cfg.context_dim}], got "
                f"{None if context is None else list(context.shape)}")
        require(pooled is not None and tuple(pooled.shape) == (B, cfg.pooled_dim),
                f"pooled must have shape [{B}, {cfg.pooled_dim}], got {None if pooled is None else list(pooled.shape)}")
        require(context_mask is None or tuple(context_mask.shape) == tuple(context.shape[:2]),
                f"context_mask must have shape {list(context.shape[:2])}, got "
                f"{None if context_mask is None else list(context_mask.shape)}")

    def forward(self, x, t, context=None, pooled=None, context_mask=None, block_cache=None):
        """x [B, C, H, W], t [B] or scalar (model time in [0, 1000]), context [B, L, context_dim],
        pooled [B, pooled_dim], context_mask [B, L] (True = attend; None = every token) -> [B, C_out, H, W].
        ``block_cache``: a :class:`~difflab.models.block_cache.BlockCacheState` (first-block caching)."""
        cfg, p = self.config, self.config.patch_size
        self.check_input(x, context, pooled, context_mask)
        B, _, H, W = x.shape
        h, w = H // p, W // p
        tokens = self.patchify(x).flatten(2).transpose(1, 2)                        # [B, h*w, D]
        tokens = tokens + self.positions(h, w).to(tokens.dtype)                      # [B, h*w, D]
        out = self.transform(tokens, t, context, pooled, context_mask, block_cache)  # [B, h*w, p*p*C]
        out = out.view(B, h, w, p, p, cfg.output_channels)                          # [B, h, w, p, p, C]
        return out.permute(0, 5, 1, 3, 2, 4).reshape(B, cfg.output_channels, H, W)  # [B, C, H, W]

    def transform(self, tokens, t, context, pooled, context_mask, block_cache=None):
        """The joint blocks and the final layer on embedded patches: tokens [B, N, D] (positions added)
        -> [B, N, p*p*C_out], each token's patch in (row, column, channel) order."""
        cfg = self.config
        B, N, _ = tokens.shape
        t = broadcast_time(t, B, tokens.device)                                     # [B]
        c = self.time_mlp(time_features(t, cfg.frequency_dim, True, 0).to(tokens.dtype))  # [B, D]
        c = c + self.pooled_mlp(pooled.to(tokens.dtype))                             # [B, D]
        text = self.context_proj(context.to(tokens.dtype))                          # [B, L, D]
        mask = None
        if context_mask is not None and not bool(context_mask.all()):
            image_keys = context_mask.new_ones(B, N, dtype=torch.bool)              # [B, N]
            mask = torch.cat([context_mask.bool(), image_keys], 1)[:, None, None]   # [B, 1, 1, L+N]
        def rest(tokens, text):
            for block in self.blocks[1:]:
                tokens, text = block(tokens, text, c, mask)                         # [B, N, D], [B, L, D]
            return tokens
        tokens = run_blocks(tokens, lambda x: self.blocks[0](x, text, c, mask), rest, block_cache)
        scale, shift = self.ada_out(F.silu(c)).chunk(2, dim=1)                      # each [B, D]
        return self.proj_out(modulate(self.norm_out(tokens), shift, scale))         # [B, N, p*p*C]
