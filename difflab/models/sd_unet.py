"""The latent-diffusion UNet of Stable Diffusion 1.x / 2.x (Rombach et al., 2022) and SDXL (Podell et al., 2023).

Written from the architecture so that the published weights run in difflab's own network: levels
of ResNet blocks whose convolutions see an additive projection of the time embedding, spatial
transformers (self-attention, cross-attention to the text tokens, GEGLU feed-forward) at chosen
levels, a ResNet-transformer-ResNet middle, and a decoder that concatenates the encoder's outputs.
SDXL adds its "micro-conditioning": the pooled text embedding and sinusoidal features of the size
and crop ids (original size, crop corner, target size) go through one MLP into the time embedding
(Podell et al. 2023, sec. 2.2). Called as::

    model(x, t, context, pooled=None, time_ids=None) -> prediction      # SDXL needs pooled and time_ids

The weights of a diffusers folder or a single-file checkpoint enter through the key maps of
:mod:`difflab.convert.diffusers_unet`; :meth:`SDUNetConfig.from_diffusers` reads a diffusers
``unet/config.json``. Unlike diffusers, input sides must be multiples of :attr:`SDUNet.size_multiple`
(diffusers resizes its skips instead); the network never branches on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from difflab.models.base import ModelMixin, is_int, is_optional_int, register_model, require
from difflab.models.layers import Downsample, Upsample, broadcast_time

# diffusers UNet2DConditionModel settings SDUNet reads, and those it supports at one value only.
_READ = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
         "up_block_types", "attention_head_dim", "num_attention_heads", "transformer_layers_per_block",
         "cross_attention_dim", "use_linear_projection", "norm_num_groups", "norm_eps", "flip_sin_to_cos",
         "freq_shift", "addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim",
         "sample_size", "only_cross_attention")
_FIXED = {"center_input_sample": False, "mid_block_type": "UNetMidBlock2DCrossAttn", "downsample_padding": 1,
          "mid_block_scale_factor": 1, "dropout": 0.0, "act_fn": "silu", "reverse_transformer_layers_per_block": None,
          "encoder_hid_dim": None, "encoder_hid_dim_type": None, "dual_cross_attention": False,
          "class_embed_type": None, "num_class_embeds": None, "resnet_time_scale_shift": "default",
          "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0, "time_embedding_type": "positional",
          "time_embedding_dim": None, "time_embedding_act_fn": None, "timestep_post_act": None,
          "time_cond_proj_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3, "attention_type": "default",
          "class_embeddings_concat": False, "mid_block_only_cross_attention": None, "cross_attention_norm": None}
# upcast_attention: fp32 softmax, which scaled_dot_product_attention's kernels do anyway;
# addition_embed_type_num_heads: used by addition_embed_type="text_image" only, which is refused.
_IGNORED = ("upcast_attention", "addition_embed_type_num_heads")
_DOWN_TYPES = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
_UP_TYPES = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}


def _per_level(value, n: int, name: str) -> tuple:
    """An int for every level, or a list with one entry per level -> tuple of n."""
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,) * n
    require(len(values) == n and all(is_int(v) for v in values),
            f"diffusers UNet config: {name} must be a positive integer or {n} of them (one per level), got {value!r}")
    return values


@dataclass(frozen=True)
class SDUNetConfig:
    """Architecture of an :class:`SDUNet`; the defaults are Stable Diffusion 1.x's. Per-level tuples
    are indexed by level (0 = full resolution), the decoder's entries included."""

    in_channels: int = 4
    out_channels: int = 4
    channels: tuple[int, ...] = (320, 640, 1280, 1280)          # block_out_channels
    layers_per_block: int = 2                                   # ResNet blocks per encoder level (decoder: +1)
    down_attention: tuple[bool, ...] = (True, True, True, False)  # encoder level has spatial transformers
    up_attention: tuple[bool, ...] = (True, True, True, False)    # decoder level has spatial transformers
    heads: tuple[int, ...] = (8, 8, 8, 8)                       # attention heads per level (head size = width / heads)
    transformer_depth: tuple[int, ...] = (1, 1, 1, 1)           # transformer blocks per spatial transformer
    context_dim: int = 768                                      # text-token width (cross_attention_dim)
    linear_projection: bool = False                             # proj_in/out: Linear (SD 2, SDXL) or 1x1 conv (SD 1)
    norm_groups: int = 32
    norm_eps: float = 1e-5                                      # ResNet and output GroupNorms (transformers: 1e-6)
    flip_sin_to_cos: bool = True                                # time features ordered cos, sin
    freq_shift: int = 0                                         # frequencies exp(-ln(1e4) i / (half - freq_shift))
    time_ids_dim: int | None = None                             # SDXL: sinusoidal features per size/crop id
    add_embed_dim: int | None = None                            # SDXL: pooled width + n_ids * time_ids_dim
    sample_size: int | None = None                              # latent side it was trained at (informative)

    def __post_init__(self):
        n = len(self.channels) if isinstance(self.channels, tuple) else 0
        require(is_int(self.in_channels) and is_int(self.out_channels),
                f"in_channels and out_channels must be positive integers, got {self.in_channels}, {self.out_channels}")
        require(n >= 1 and all(is_int(c) for c in self.channels),
                f"channels must be a non-empty tuple of positive integers, got {self.channels!r}")
        require(is_int(self.layers_per_block), f"layers_per_block must be >= 1, got {self.layers_per_block!r}")
        for name in ("down_attention", "up_attention"):
            value = getattr(self, name)
            require(isinstance(value, tuple) and len(value) == n and all(isinstance(v, bool) for v in value),
                    f"{name} must be {n} booleans (one per level), got {value!r}")
        for name in ("heads", "transformer_depth"):
            value = getattr(self, name)
            require(isinstance(value, tuple) and len(value) == n and all(is_int(v) for v in value),
                    f"{name} must be {n} positive integers (one per level), got {value!r}")
        require(all(c % h == 0 for c, h in zip(self.channels, self.heads)),
                f"every level's width must be divisible by its heads, got channels {self.channels} "
                f"and heads {self.heads}")
        require(is_int(self.norm_groups) and all(c % self.norm_groups == 0 for c in self.channels),
                f"norm_groups must divide every width {self.channels}, got {self.norm_groups!r}")
        require(is_int(self.context_dim), f"context_dim must be a positive integer, got {self.context_dim!r}")
        require(isinstance(self.norm_eps, float) and self.norm_eps > 0, f"norm_eps must be > 0, got {self.norm_eps!r}")
        for name in ("linear_projection", "flip_sin_to_cos"):
            require(isinstance(getattr(self, name), bool), f"{name} must be true or false, got {getattr(self, name)!r}")
        require(is_int(self.freq_shift, 0), f"freq_shift must be an integer >= 0, got {self.freq_shift!r}")
        require(is_optional_int(self.time_ids_dim) and is_optional_int(self.add_embed_dim)
                and (self.time_ids_dim is None) == (self.add_embed_dim is None),
                f"time_ids_dim and add_embed_dim are set together (SDXL) or not at all, "
                f"got {self.time_ids_dim!r}, {self.add_embed_dim!r}")
        require(is_optional_int(self.sample_size),
                f"sample_size must be a positive integer or None, got {self.sample_size!r}")

    @classmethod
    def from_diffusers(cls, config: dict) -> SDUNetConfig:
        """The config of a diffusers ``UNet2DConditionModel`` (its ``unet/config.json``), refusing what SDUNet lacks.

        diffusers' ``attention_head_dim`` is, for these models, the number of heads (its own
        ``num_attention_heads = num_attention_heads or attention_head_dim``).
        """
        require(isinstance(config, dict), f"a diffusers UNet config must be a JSON object, got {type(config).__name__}")
        c = {k: v for k, v in config.items() if not k.startswith("_")}
        unknown = sorted(set(c) - set(_READ) - set(_FIXED) - set(_IGNORED))
        require(not unknown, f"diffusers UNet config: unknown key(s) {unknown}; SDUNet reads {sorted(_READ)}")
        for key, allowed in _FIXED.items():
            value = c.get(key, allowed)                      # 0 == False in Python: compare the kinds too
            require(value == allowed and isinstance(value, bool) == isinstance(allowed, bool),
                    f"diffusers UNet config: {key}={value!r} is not supported (SDUNet supports {allowed!r} only)")
        only_cross = c.get("only_cross_attention", False)
        require(all(v is False for v in (only_cross if isinstance(only_cross, list) else [only_cross])),
                f"diffusers UNet config: only_cross_attention={only_cross!r} is not supported (false only)")
        require(c.get("num_attention_heads") is None,
                "diffusers UNet config: num_attention_heads must be null "
                "(diffusers reads the heads from attention_head_dim)")
        channels = c.get("block_out_channels", ())
        channels = tuple(channels) if isinstance(channels, (list, tuple)) else channels
        n = len(channels) if isinstance(channels, tuple) else 0
        down, up = c.get("down_block_types", ()), c.get("up_block_types", ())
        require(isinstance(down, (list, tuple)) and len(down) == n and all(b in _DOWN_TYPES for b in map(str, down)),
                f"diffusers UNet config: down_block_types must be {n} of {sorted(_DOWN_TYPES)}, got {down}")
        require(isinstance(up, (list, tuple)) and len(up) == n and all(b in _UP_TYPES for b in map(str, up)),
                f"diffusers UNet config: up_block_types must be {n} of {sorted(_UP_TYPES)}, got {up}")
        extra = c.get("addition_embed_type")
        require(extra in (None, "text_time"),
                f"diffusers UNet config: addition_embed_type={extra!r} is not supported (null or 'text_time')")
        context_dim = c.get("cross_attention_dim", 1280)
        require(is_int(context_dim),
                f"diffusers UNet config: cross_attention_dim must be one integer, got {context_dim!r}")
        norm_eps = c.get("norm_eps", 1e-5)
        norm_eps = float(norm_eps) if isinstance(norm_eps, int) and not isinstance(norm_eps, bool) else norm_eps
        return cls(in_channels=c.get("in_channels", 4), out_channels=c.get("out_channels", 4), channels=channels,
                   layers_per_block=c.get("layers_per_block", 2),
                   down_attention=tuple(_DOWN_TYPES[b] for b in down),
                   up_attention=tuple(_UP_TYPES[b] for b in reversed(up)),
                   heads=_per_level(c.get("attention_head_dim", 8), n, "attention_head_dim"),
                   transformer_depth=_per_level(c.get("transformer_layers_per_block", 1), n,
                                                "transformer_layers_per_block"),
                   context_dim=context_dim, linear_projection=c.get("use_linear_projection", False),
                   norm_groups=c.get("norm_num_groups", 32), norm_eps=norm_eps,
                   flip_sin_to_cos=c.get("flip_sin_to_cos", True), freq_shift=c.get("freq_shift", 0),
                   time_ids_dim=c.get("addition_time_embed_dim") if extra else None,
                   add_embed_dim=c.get("projection_class_embeddings_input_dim") if extra else None,
                   sample_size=c.get("sample_size"))


# The published UNets as configs (the values of their diffusers unet/config.json), for single files without one.
SD_UNET_CONFIGS = {
    "sd1": SDUNetConfig(),
    "sd2": SDUNetConfig(heads=(5, 10, 20, 20), context_dim=1024, linear_projection=True),
    "sdxl": SDUNetConfig(channels=(320, 640, 1280), down_attention=(False, True, True),
                         up_attention=(False, True, True), heads=(5, 10, 20), transformer_depth=(1, 2, 10),
                         context_dim=2048, linear_projection=True, time_ids_dim=256, add_embed_dim=2816),
}


def time_features(t: torch.Tensor, dim: int, flip_sin_to_cos: bool, freq_shift: int,
                  max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features (Vaswani et al. 2017, sec. 3.5) as the SD UNets take them; t [B] -> [B, dim].

    ``w_i = max_period^(-i / (half - freq_shift))``, features ``[sin(t w), cos(t w)]`` (``[cos, sin]``
    when flipped); an odd ``dim`` gets a zero last column.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    args = t.float()[:, None] * torch.exp(exponent)[None]                     # [B, half]
    sin, cos = torch.sin(args), torch.cos(args)
    return F.pad(torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1), (0, dim % 2))


def mlp(in_features: int, dim: int) -> nn.Sequential:
    """Linear-SiLU-Linear; weights named ``0.*`` and ``2.*``."""
    return nn.Sequential(nn.Linear(in_features, dim), nn.SiLU(), nn.Linear(dim, dim))


class SDResBlock(nn.Module):
    """Pre-activation ResNet block (He et al. 2016) of the SD UNets: the projected time embedding is
    *added* between the convolutions. ``out = skip(x) + conv2(silu(GN(conv1(silu(GN(x))) + W e))))``."""

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, groups: int, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_proj = nn.Linear(embed_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x [B, C_in, H, W], emb = silu(time embedding) [B, E] -> [B, C_out, H, W]."""
        h = self.conv1(F.silu(self.norm1(x)))                                  # [B, C_out, H, W]
        h = h + self.time_proj(emb)[:, :, None, None]                          # [B, C_out, H, W]
        h = self.conv2(F.silu(self.norm2(h)))                                  # [B, C_out, H, W]
        return (x if self.skip is None else self.skip(x)) + h


class Attention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017, eq. 1) with bias-free q/k/v projections; keys and
    values come from ``context`` (cross-attention) or from ``x`` itself when it is None."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape                                                      # [B, N, C]
        context = x if context is None else context                            # [B, L, C_ctx]
        split = lambda z: z.view(B, z.shape[1], self.heads, C // self.heads).transpose(1, 2)  # [B, h, L, C/h]
        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        h = F.scaled_dot_product_attention(q, k, v)                            # [B, h, N, C/h]
        return self.to_out(h.transpose(1, 2).reshape(B, N, C))                 # [B, N, C]


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: self-attention, cross-attention to the text tokens, GEGLU feed-forward
    of width 4C (Shazeer 2020: ``value * gelu(gate)``), each residual."""

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        self.norm1, self.self_attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.cross_attn = nn.LayerNorm(dim), Attention(dim, heads, context_dim)
        self.norm3, self.ff_in, self.ff_out = nn.LayerNorm(dim), nn.Linear(dim, 8 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))                                  # [B, N, C]
        x = x + self.cross_attn(self.norm2(x), context)                        # [B, N, C]
        value, gate = self.ff_in(self.norm3(x)).chunk(2, dim=-1)               # 2 x [B, N, 4C]
        return x + self.ff_out(F.gelu(gate).mul_(value))                       # in place: one [B, N, 4C] fewer


class SpatialTransformer(nn.Module):
    """Rombach et al. (2022), sec. 3.3: GroupNorm, project in, transformer blocks over the pixels as
    tokens, project out, plus the input. Projections are 1x1 convolutions (SD 1) or Linear (SD 2, SDXL)."""

    def __init__(self, channels: int, heads: int, depth: int, context_dim: int, linear: bool, groups: int):
        super().__init__()
        self.linear = linear
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        projection = (lambda: nn.Linear(channels, channels)) if linear else (lambda: nn.Conv2d(channels, channels, 1))
        self.proj_in, self.proj_out = projection(), projection()
        self.blocks = nn.ModuleList(TransformerBlock(channels, heads, context_dim) for _ in range(depth))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        tokens = lambda z: z.permute(0, 2, 3, 1).reshape(B, H * W, C)          # [B, C, H, W] -> [B, HW, C]
        image = lambda z: z.reshape(B, H, W, C).permute(0, 3, 1, 2)            # [B, HW, C] -> [B, C, H, W]
        h = self.norm(x)                                                       # [B, C, H, W]
        h = self.proj_in(tokens(h)) if self.linear else tokens(self.proj_in(h))  # [B, HW, C]
        for block in self.blocks:
            h = block(h, context)                                              # [B, HW, C]
        h = image(self.proj_out(h)) if self.linear else self.proj_out(image(h))  # [B, C, H, W]
        return x + h


class SDUpsample(Upsample):
    """Nearest 2x then a 3x3 convolution. :class:`Upsample`'s exact sub-pixel form (16 instead of 36
    multiply-adds per output) refolds the kernel on every call (4C x C x 2 x 2, 105 MB at 1280 channels)
    and oneDNN runs its 2x2 kernel slowly on small images, so inputs under 32x32 take the plain path. On
    SD 1.5's 1280-channel upsamplers (benchmarks/real_models.py) that is 2.3x faster at 8x8, even at
    16x16, and ~300 MB less transient memory; from 32x32 on the sub-pixel form is ~1.9x faster.
    The sub-pixel form reads the plain kernel, so a wrapped ``conv`` (a LoRA layer of peft) is called
    as a module instead, which applies its adapters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] * x.shape[-1] >= 32 * 32 and type(self.conv) is nn.Conv2d:
            return super().forward(x)                                          # [B, C, 2H, 2W]
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))   # [B, C, 2H, 2W]


def _res_block(cfg: SDUNetConfig, c_in: int, c_out: int) -> SDResBlock:
    return SDResBlock(c_in, c_out, 4 * cfg.channels[0], cfg.norm_groups, cfg.norm_eps)


def _transformer(cfg: SDUNetConfig, i: int) -> SpatialTransformer:
    return SpatialTransformer(cfg.channels[i], cfg.heads[i], cfg.transformer_depth[i], cfg.context_dim,
                              cfg.linear_projection, cfg.norm_groups)


class Level(nn.Module):
    """One resolution of the encoder or decoder: ResNet blocks, each followed by a spatial
    transformer when the level has attention, then an optional resampler."""

    def __init__(self, res: list[nn.Module], attn: list[nn.Module], resample: nn.Module | None):
        super().__init__()
        self.res, self.attn, self.resample = nn.ModuleList(res), nn.ModuleList(attn), resample

    def block(self, j: int, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.res[j](h, emb)                                                # [B, C, H, W]
        return self.attn[j](h, context) if len(self.attn) else h


@register_model
class SDUNet(ModelMixin):
    """SDUNet(channels=..., ...) or SDUNet(config=SD_UNET_CONFIGS["sdxl"]); see the module docstring."""

    config_class = SDUNetConfig

    def build(self, cfg: SDUNetConfig) -> None:
        ch, n, L = cfg.channels, len(cfg.channels), cfg.layers_per_block
        skip_widths = self.build_encoder(cfg)
        self.up = nn.ModuleList()                                              # deepest level first
        for i in reversed(range(n)):
            c_first = ch[min(i + 1, n - 1)]
            self.up.append(Level([_res_block(cfg, (c_first if j == 0 else ch[i]) + skip_widths.pop(), ch[i])
                                  for j in range(L + 1)],
                                 [_transformer(cfg, i) for _ in range(L + 1)] if cfg.up_attention[i] else [],
                                 SDUpsample(ch[i]) if i > 0 else None))
        self.norm_out = nn.GroupNorm(cfg.norm_groups, ch[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    def build_encoder(self, cfg: SDUNetConfig) -> list[int]:
        """conv_in, embeddings, down levels and middle (what a ControlNet copies) -> the skips' widths."""
        ch, n, L = cfg.channels, len(cfg.channels), cfg.layers_per_block
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_mlp = mlp(ch[0], 4 * ch[0])
        self.add_mlp = mlp(cfg.add_embed_dim, 4 * ch[0]) if cfg.add_embed_dim else None
        self.down, skip_widths = nn.ModuleList(), [ch[0]]
        for i, c in enumerate(ch):
            self.down.append(Level([_res_block(cfg, ch[max(i - 1, 0)] if j == 0 else c, c) for j in range(L)],
                                   [_transformer(cfg, i) for _ in range(L)] if cfg.down_attention[i] else [],
                                   Downsample(c) if i < n - 1 else None))
            skip_widths += [c] * (L + (i < n - 1))
        self.mid_res1, self.mid_attn = _res_block(cfg, ch[-1], ch[-1]), _transformer(cfg, n - 1)
        self.mid_res2 = _res_block(cfg, ch[-1], ch[-1])
        return skip_widths

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (its total downsampling)."""
        return 2 ** (len(self.config.channels) - 1)

    def check_input(self, x, context, pooled, time_ids) -> None:
        cfg, m = self.config, self.size_multiple
        require(x.dim() == 4 and x.shape[1] == cfg.in_channels,
                f"x must have shape [B, {cfg.in_channels}, H, W], got {list(x.shape)}")
        require(x.shape[2] % m == 0 and x.shape[3] % m == 0,
                f"height and width must be multiples of {m}, got {list(x.shape[2:])}")
        require(context is not None and context.dim() == 3 and context.shape[0] == x.shape[0]
                and context.shape[2] == cfg.context_dim,
                f"context (text tokens) must have shape [{x.shape[0]}, L, {cfg.context_dim}], got "
                f"{None if context is None else list(context.shape)}; "
                f"an empty prompt's tokens are the unconditional input")
        if cfg.add_embed_dim is None:
            require(pooled is None and time_ids is None,
                    "pooled and time_ids are for SDXL-style UNets; this one takes neither")
            return
        ok = (pooled is not None and time_ids is not None and pooled.dim() == 2 and time_ids.dim() == 2
              and pooled.shape[0] == time_ids.shape[0] == x.shape[0]
              and pooled.shape[1] + time_ids.shape[1] * cfg.time_ids_dim == cfg.add_embed_dim)
        require(ok, f"this SDXL-style UNet needs pooled [B, P] and time_ids [B, K] with P + K * {cfg.time_ids_dim} "
                    f"= {cfg.add_embed_dim}, got {None if pooled is None else list(pooled.shape)} and "
                    f"{None if time_ids is None else list(time_ids.shape)}")

    def forward(self, x, t, context=None, pooled=None, time_ids=None, control_residuals=None):
        """x [B, C_in, H, W], t [B] or scalar, context [B, L, D] -> [B, C_out, H, W].

        SDXL-style UNets also take pooled [B, P] (the pooled text embedding) and time_ids [B, K]
        (original height, width, crop top, left, target height, width for SDXL base). ``control_residuals``
        (skips, mid) of an :class:`~difflab.models.sd_controlnet.SDControlNet` are added to the skips (diffusers'
        order) and the middle's output, as diffusers' ``down_block_additional_residuals`` and
        ``mid_block_additional_residual`` (Zhang et al. 2023, eq. 2: locked block + zero-convolved copy)."""
        self.check_input(x, context, pooled, time_ids)
        emb = self.embed(x, t, pooled, time_ids)                               # [B, E]
        h, skips = self.encode(self.conv_in(x), emb, context)                  # [B, c_-1, H/m, W/m], skips
        if control_residuals is not None:
            extra, mid = control_residuals
            skips, h = [s + r for s, r in zip(skips, extra, strict=True)], h + mid
        for level in self.up:
            for j in range(len(level.res)):
                h = level.block(j, torch.cat([h, skips.pop()], dim=1), emb, context)  # [B, c_i, H/2^i, W/2^i]
            if level.resample is not None:
                h = level.resample(h)                                          # [B, c_i, H/2^(i-1), W/2^(i-1)]
        return self.conv_out(F.silu(self.norm_out(h)))                         # [B, C_out, H, W]

    def embed(self, x, t, pooled=None, time_ids=None) -> torch.Tensor:
        """silu(time embedding [+ SDXL's micro-conditioning]) [B, E], which every ResNet block projects."""
        cfg, B = self.config, x.shape[0]
        t = broadcast_time(t, B, x.device)                                     # [B]
        features = time_features(t, cfg.channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)  # [B, ch0]
        emb = self.time_mlp(features.to(x.dtype))                              # [B, E]
        if self.add_mlp is not None:                                           # SDXL micro-conditioning
            ids = time_features(time_ids.reshape(-1), cfg.time_ids_dim, cfg.flip_sin_to_cos, cfg.freq_shift)  # [B*K, D]
            extra = torch.cat([pooled, ids.reshape(B, -1).to(pooled.dtype)], dim=1)  # [B, P + K*D]
            emb = emb + self.add_mlp(extra.to(emb.dtype))                      # [B, E]
        return F.silu(emb)

    def encode(self, h, emb, context) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """conv_in's output [B, ch0, H, W] -> (the middle's output, skips: it, every block's, every downsampler's)."""
        skips = [h]
        for level in self.down:
            for j in range(len(level.res)):
                h = level.block(j, h, emb, context)                            # [B, c_i, H/2^i, W/2^i]
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)                                          # [B, c_i, H/2^(i+1), W/2^(i+1)]
                skips.append(h)
        return self.mid_res2(self.mid_attn(self.mid_res1(h, emb), context), emb), skips  # [B, c_-1, H/m, W/m]
