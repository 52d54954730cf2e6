"""Building blocks shared by the UNet, the DiT and the VAE; each is written once here.

Images run in ``channels_last`` memory (NHWC) end to end: oneDNN convolutions are faster in it on
CPU, and an NHWC image ``[B, C, H, W]`` is already a token sequence ``[B, H*W, C]`` for attention,
so going from convolutions to attention and back costs no copy. PyTorch's own GroupNorm is slow on
NHWC tensors (up to 10x its NCHW speed here), so group normalisation is a small autograd function
of our own that works on the token layout, with the time embedding's scale/shift and the SiLU
folded into one pass (see :func:`group_norm`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

POSITION_FREQUENCIES = 4  # octaves of the attention blocks' Fourier positions: periods 2, 1, 1/2, 1/4 of the side


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (fractional) model time, Vaswani et al. (2017) sec. 3.5.

    ``emb[:, i] = cos(t * w_i)``, ``emb[:, half + i] = sin(t * w_i)``, ``w_i = max_period^(-i/half)``.
    ``t``: [B] float -> [B, dim].
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]                                  # [B, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)              # [B, 2*half]
    return F.pad(emb, (0, dim - 2 * half))                                   # odd dim: one zero column


def broadcast_time(t, batch: int, device: torch.device) -> torch.Tensor:
    """Model time as a float tensor [B]: a scalar, 0-dim or [1] tensor is broadcast to the batch."""
    t = torch.as_tensor(t, device=device)
    if t.dim() == 0 or t.numel() == 1 and batch != 1:
        t = t.reshape(1).expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must be a scalar or a tensor of shape [{batch}] (the batch), got shape {list(t.shape)}")
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise ValueError("t contains NaN or infinite values; model time must be finite (in [0, 1000))")
    return t.float()


def class_labels_tensor(labels, num_classes: int, batch: int, device) -> torch.Tensor:
    """Class labels as a long tensor [B]; None means the null class ``num_classes`` (for CFG)."""
    if labels is None:
        return torch.full((batch,), num_classes, device=device, dtype=torch.long)
    labels = torch.as_tensor(labels, device=device)
    if labels.is_floating_point() or labels.numel() not in (1, batch):
        raise ValueError(f"class_labels must be {batch} integers (or one, broadcast), got {labels.numel()} "
                         f"of dtype {labels.dtype}")
    labels = labels.long().reshape(-1).expand(batch)
    if labels.min() < 0 or labels.max() > num_classes:
        raise ValueError(f"class_labels must be in 0..{num_classes - 1}, or {num_classes} for the null class; "
                         f"got values {labels.min().item()}..{labels.max().item()}")
    return labels


class TimestepEmbedder(nn.Sequential):
    """Model time t [B] -> [B, D]: sinusoidal features, then Linear-SiLU-Linear (DiT's ``TimestepEmbedder``).

    A ``Sequential`` of the MLP, so its weights keep the names ``0.weight``, ``2.weight``, ...
    """

    def __init__(self, frequency_dim: int, dim: int):
        super().__init__(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.frequency_dim = frequency_dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = timestep_embedding(t, self.frequency_dim).to(self[0].weight.dtype)   # [B, F], the MLP's dtype
        return super().forward(features)                                                # [B, D]


class LabelEmbedder(nn.Embedding):
    """Class labels [B] -> [B, D]; row ``num_classes`` is the learned null class (Ho & Salimans, 2022)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__(num_classes + 1, dim)
        self.num_classes = num_classes

    def forward(self, labels, batch: int, device) -> torch.Tensor:
        return super().forward(class_labels_tensor(labels, self.num_classes, batch, device))


GUIDANCE_EMBED_SCALE = 100.0   # guidance scale w -> the embedder's "time" 100 w (w in [1, 10] spans its range)


class ConditionEmbedding:
    """Mixin of a network conditioned as DiT is: ``c = t_embedder(t) + y_embedder(y) + pooled_proj(pooled)``.

    The embedders are attributes of the network itself (``time_mlp``, ``class_embed``, ``pooled_proj``),
    so their weights keep those names in the state_dict. A new condition is one more embedder here.
    """

    def init_condition_embedding(self, frequency_dim: int, dim: int, num_classes: int | None,
                                 pooled_dim: int | None) -> None:
        self.time_mlp = TimestepEmbedder(frequency_dim, dim)
        self.class_embed = LabelEmbedder(num_classes, dim) if num_classes else None
        self.pooled_proj = nn.Linear(pooled_dim, dim) if pooled_dim else None

    @property
    def null_class(self) -> int | None:
        """The label that means "no class" (classifier-free guidance), or None if unconditional."""
        return self.class_embed.num_classes if self.class_embed is not None else None

    def init_guidance_embedding(self, frequency_dim: int, dim: int) -> None:
        """A guidance-scale embedder (LCM, Luo et al. 2023, Sec. 4.2: the teacher's CFG scale w as an
        input), its output layer zero-initialised so a student grown from its teacher starts as it."""
        self.guidance_embed = TimestepEmbedder(frequency_dim, dim)
        nn.init.zeros_(self.guidance_embed[2].weight)
        nn.init.zeros_(self.guidance_embed[2].bias)

    def condition(self, t, batch: int, device, class_labels=None, pooled=None, guidance=None) -> torch.Tensor:
        """Conditioning vector c [B, D] = time (+ class) (+ pooled text) (+ guidance scale) embedding."""
        c = self.time_mlp(broadcast_time(t, batch, device))                   # [B, D]
        embedder = getattr(self, "guidance_embed", None)
        if (guidance is None) != (embedder is None):
            raise ValueError(f"guidance= is the scale a guidance-distilled network embeds; this {type(self).__name__} "
                             + ("has no guidance embedding" if embedder is None else "embeds one: pass guidance=w"))
        if embedder is not None:
            c = c + embedder(broadcast_time(guidance, batch, device) * GUIDANCE_EMBED_SCALE)
        if class_labels is not None and self.class_embed is None:
            raise ValueError(f"class_labels given, but this {type(self).__name__} has no num_classes "
                             f"(it is not class-conditional)")
        if self.class_embed is not None:
            c = c + self.class_embed(class_labels, batch, device)
        if pooled is not None:
            pooled_dim = self.pooled_proj.in_features if self.pooled_proj is not None else None
            if pooled_dim is None or pooled.shape != (batch, pooled_dim):
                raise ValueError(f"pooled must have shape [{batch}, pooled_dim] with pooled_dim={pooled_dim}, "
                                 f"got {list(pooled.shape)}")
            c = c + self.pooled_proj(pooled)
        return c


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H*W, C]; a free view when ``x`` is channels_last."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


def from_tokens(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, H*W, C] -> [B, C, H, W] in channels_last memory, without a copy."""
    return tokens.reshape(tokens.shape[0], height, width, tokens.shape[2]).permute(0, 3, 1, 2)


class _GroupNormTokens(torch.autograd.Function):
    """y = act(gamma * (x - mean_g) / sqrt(var_g + eps) + beta) on tokens x [B, N, C].

    Wu & He (2018) eq. 1 with per-sample affine gamma, beta [B, C] (time-embedding scale/shift
    folded in) and an optional SiLU. Statistics come from per-channel sums, which are contiguous
    reductions in this layout; the backward pass is the closed form of the normalisation's
    gradient, two fused passes over x instead of autograd's ten.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, groups: int, eps: float, act: bool):
        B, N, C = x.shape
        n = N * (C // groups)                                                 # elements per group
        sums = torch.stack([x.sum(1), torch.mul(x, x).sum(1)]).view(2, B, groups, -1).sum(-1) / n
        mean, var = sums[0], (sums[1] - sums[0] * sums[0]).clamp_min_(0)    # [B, G] each
        rstd = (var + eps).rsqrt_()[..., None]                                # [B, G, 1]
        a = (gamma.view(B, groups, -1) * rstd).view(B, C)                     # y = a * x + b
        b = beta - (mean[..., None] * a.view(B, groups, -1)).view(B, C)
        z = torch.addcmul(b[:, None], x, a[:, None])                          # [B, N, C]
        ctx.save_for_backward(x, z if act else None, gamma, a, mean, rstd)
        ctx.groups, ctx.n, ctx.act = groups, n, act
        return F.silu(z) if act else z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, z, gamma, a, mean, rstd = ctx.saved_tensors
        B, N, C = x.shape
        G = ctx.groups
        gz = torch.ops.aten.silu_backward(grad_y, z) if ctx.act else grad_y  # [B, N, C]
        s1, s2 = gz.sum(1).view(B, G, -1), torch.mul(gz, x).sum(1).view(B, G, -1)  # [B, G, C/G]
        mean_c = mean[..., None]                                              # [B, G, 1]
        d_gamma = rstd * (s2 - mean_c * s1)                                   # sum_n gz * xhat
        g = gamma.view(B, G, -1)
        a1 = (g * s1).sum(-1, keepdim=True) / ctx.n                           # mean_g(d xhat)
        a2 = (g * d_gamma).sum(-1, keepdim=True) / ctx.n                      # mean_g(d xhat * xhat)
        # dx = rstd * (d xhat - a1 - xhat * a2) = gz * a + x * kx + k0
        kx = -rstd * rstd * a2
        k0 = -rstd * a1 - mean_c * kx
        dx = torch.addcmul(k0.expand(B, G, C // G).reshape(B, 1, C), x, kx.expand(B, G, C // G).reshape(B, 1, C))
        dx.addcmul_(gz, a[:, None])
        return dx, d_gamma.view(B, C), s1.view(B, C), None, None, None


def group_norm(x: torch.Tensor, norm: nn.GroupNorm, scale=None, shift=None, act: bool = False) -> torch.Tensor:
    """GroupNorm (+ ``(1 + scale) * h + shift`` + SiLU) of an image [B, C, H, W] or tokens [B, N, C].

    ``scale``, ``shift``: [B, C] or None. The modulation follows Dhariwal & Nichol (2021), sec. 3
    (AdaGN). Uses ``norm``'s parameters, so weights keep PyTorch's GroupNorm layout.
    """
    gamma = norm.weight.expand(x.shape[0], -1) if norm.affine else x.new_ones(x.shape[0], norm.num_channels)
    beta = norm.bias.expand(x.shape[0], -1) if norm.affine else x.new_zeros(x.shape[0], norm.num_channels)
    if scale is not None:
        gamma, beta = gamma * (1 + scale), beta * (1 + scale) + shift
    if x.dim() == 3:
        return _GroupNormTokens.apply(x, gamma, beta, norm.num_groups, norm.eps, act)
    H, W = x.shape[-2:]
    y = _GroupNormTokens.apply(to_tokens(x), gamma, beta, norm.num_groups, norm.eps, act)
    return from_tokens(y, H, W)


def groups_for(channels: int, groups: int = 32) -> int:
    """The largest group count <= ``groups`` that divides ``channels``."""
    return math.gcd(channels, groups)


class ResBlock(nn.Module):
    """Pre-activation ResNet block, He et al. (2016); time conditioning by AdaGN scale/shift.

    ``h = conv2(drop(silu(GN(conv1(silu(GN(x)))) * (1 + scale) + shift)))``, out = skip(x) + h.
    The scale/shift [B, 2*C_out] is computed by the caller (the UNet projects all blocks' at once).
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, groups: int = 32):
        super().__init__()
        self.out_channels = out_channels
        self.norm1 = nn.GroupNorm(groups_for(in_channels, groups), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups_for(out_channels, groups), out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, scale_shift: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(group_norm(x, self.norm1, act=True))                  # [B, C_out, H, W]
        scale, shift = scale_shift.chunk(2, dim=1) if scale_shift is not None else (None, None)
        h = self.conv2(self.dropout(group_norm(h, self.norm2, scale, shift, act=True)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head attention, Vaswani et al. (2017) eq. 1, through ``scaled_dot_product_attention``.

    Self-attention when ``context_dim`` is None, else cross-attention from ``x`` to ``context``
    tokens with a key mask (True = attend). A row with no valid key contributes zero.
    """

    def __init__(self, dim: int, head_dim: int, context_dim: int | None = None, bias: bool = True):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"attention width {dim} is not divisible by head_dim={head_dim}; "
                             f"choose a head_dim that divides every attention level's channels")
        self.heads, self.head_dim, self.cross = dim // head_dim, head_dim, context_dim is not None
        if self.cross:
            self.to_q = nn.Linear(dim, dim, bias=bias)
            self.to_kv = nn.Linear(context_dim, 2 * dim, bias=bias)
        else:
            self.to_qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.to_out = nn.Linear(dim, dim, bias=bias)

    def split_heads(self, t: torch.Tensor, parts: int):
        B, N, _ = t.shape                                                     # [B, N, parts*dim]
        return t.view(B, N, parts, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, x, context=None, context_mask=None):
        B, N, C = x.shape                                                     # [B, N, C]
        if self.cross:
            (q,) = self.split_heads(self.to_q(x), 1)                          # [B, h, N, d]
            k, v = self.split_heads(self.to_kv(context), 2)                   # [B, h, L, d]
        else:
            q, k, v = self.split_heads(self.to_qkv(x), 3)
        mask, valid = None, None
        if context_mask is not None:
            valid = context_mask.any(-1)                                      # [B]
            mask = (context_mask | ~valid[:, None])[:, None, None, :]         # [B, 1, 1, L]
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)           # [B, h, N, d]
        h = self.to_out(h.transpose(1, 2).reshape(B, N, C))                   # [B, N, C]
        return h if valid is None else h * valid[:, None, None].to(h.dtype)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution: [B, C, H, W] -> [B, C, H/2, W/2]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling then a 3x3 convolution: [B, C, H, W] -> [B, C, 2H, 2W].

    Computed exactly but without building the upsampled image: each of the four output phases
    (py, px) sees only a 2x2 neighbourhood of the input, whose taps are sums of the 3x3 kernel's
    (the sub-pixel view of Shi et al., 2016). One 2x2 convolution with 4x the output channels
    costs 16 instead of 36 multiply-adds per output pixel and input channel; the parameter is
    still the 3x3 kernel, so weights match the plain formulation.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    @staticmethod
    def _fold(w: torch.Tensor, dim: int) -> list[torch.Tensor]:
        """Taps of a 3-tap axis seen by phase 0 (offsets -1, 0) and phase 1 (offsets 0, +1)."""
        t0, t1, t2 = w.unbind(dim)
        return [torch.stack([t0, t1 + t2], dim), torch.stack([t0 + t1, t2], dim)]

    def phase_kernels(self) -> torch.Tensor:
        """[4*C_out, C_in, 2, 2]: phases (0,0), (0,1), (1,0), (1,1) stacked on the output channels."""
        rows = self._fold(self.conv.weight, 2)                                # 2 x [C_out, C_in, 2, 3]
        return torch.cat([k for r in rows for k in self._fold(r, 3)], 0)

    def forward(self, x):
        B, C, H, W = x.shape
        y = F.conv2d(F.pad(x, (1, 1, 1, 1)), self.phase_kernels(), self.conv.bias.repeat(4))  # [B, 4C, H+1, W+1]
        y = y.permute(0, 2, 3, 1)                                              # NHWC view
        phase = lambda py, px: y[:, py:py + H, px:px + W, (2 * py + px) * C:(2 * py + px + 1) * C]
        rows = [torch.stack([phase(py, 0), phase(py, 1)], dim=3) for py in (0, 1)]  # 2 x [B, H, W, 2, C]
        out = torch.stack(rows, dim=2).reshape(B, 2 * H, 2 * W, C)            # [B, 2H, 2W, C]
        return out.permute(0, 3, 1, 2)                                        # [B, C, 2H, 2W] channels_last


@lru_cache(maxsize=16)
def fourier_positions_2d(height: int, width: int, frequencies: int = POSITION_FREQUENCIES) -> torch.Tensor:
    """Resolution-free 2-D positions [H*W, 4 * frequencies] of the pixel centres.

    A pixel's centre in image fractions ``u = (i + 0.5) / H`` (rows) and ``(j + 0.5) / W`` (columns)
    is encoded as ``sin(pi 2^k u), cos(pi 2^k u)`` for ``k < frequencies``, the Fourier features of
    Tancik et al. (2020) / the positional encoding of NeRF (Mildenhall et al., 2020, eq. 4). Being
    fractions of the side, the same place of the picture gets the same code at every level and
    every canvas size.
    """
    freqs = math.pi * 2.0 ** torch.arange(frequencies, dtype=torch.float64)           # [F]
    u = (torch.arange(height, dtype=torch.float64) + 0.5) / height                    # [H]
    v = (torch.arange(width, dtype=torch.float64) + 0.5) / width                      # [W]
    enc = lambda z: torch.cat([torch.sin(z[:, None] * freqs), torch.cos(z[:, None] * freqs)], 1)
    rows = enc(u)[:, None, :].expand(height, width, -1)
    cols = enc(v)[None, :, :].expand(height, width, -1)
    return torch.cat([rows, cols], -1).reshape(height * width, -1).float()           # [H*W, 4F]


class AttentionBlock(nn.Module):
    """Self-attention over an image's pixels (+ cross-attention to text tokens), each residual.

    The attention block of Ho et al. (2020) / Rombach et al. (2022) without the feed-forward:
    ``x = x + attn(GN(x))``, then ``x = x + cross(GN(x), context)`` when ``context_dim`` is set.
    Tokens are a free view of the channels_last image.

    With ``positions=True`` a learned projection of :func:`fourier_positions_2d` is added to the
    normalised tokens that enter both attentions (not to the residual stream), so a query knows
    where it is in the picture and "in the top left" can be matched by place, not only inferred
    from the zero padding's edge effects. The projection starts at zero: a block with positions
    computes exactly what it computed without them until training moves it.
    """

    def __init__(self, channels: int, head_dim: int, context_dim: int | None = None, groups: int = 32,
                 positions: bool = False):
        super().__init__()
        self.norm = nn.GroupNorm(groups_for(channels, groups), channels)
        self.attn = Attention(channels, min(head_dim, channels))
        if context_dim is not None:
            self.norm_cross = nn.GroupNorm(groups_for(channels, groups), channels)
            self.cross = Attention(channels, min(head_dim, channels), context_dim=context_dim)
        self.pos_proj = nn.Linear(4 * POSITION_FREQUENCIES, channels, bias=False) if positions else None
        if self.pos_proj is not None:
            nn.init.zeros_(self.pos_proj.weight)

    def forward(self, x, context=None, context_mask=None):
        H, W = x.shape[-2:]
        tokens = to_tokens(x)                                                 # [B, H*W, C]
        pos = 0.0
        if self.pos_proj is not None:
            pos = self.pos_proj(fourier_positions_2d(H, W).to(x.device, x.dtype))  # [H*W, C]
        tokens = tokens + self.attn(group_norm(tokens, self.norm) + pos)
        if context is not None and hasattr(self, "cross"):
            tokens = tokens + self.cross(group_norm(tokens, self.norm_cross) + pos, context, context_mask)
        return from_tokens(tokens, H, W)                                      # [B, C, H, W]
