"""Video UNet: difflab's image UNet with temporal layers after every spatial block (factorised space-time).

Each frame runs through the spatial UNet as an image (the batch holds B x T frames); after every
ResNet block (and its spatial attention) a :class:`TemporalBlock` mixes each pixel's features
across the T frames: a temporal convolution (kernel 3 in time) and self-attention over the frames
with sinusoidal frame positions. This is the factorisation of Ho et al., "Video Diffusion Models"
(2022, Sec. 3: space-only layers plus temporal attention) with the temporal convolution of Singer
et al., "Make-A-Video" (2022, Sec. 3.2, pseudo-3D convolution). Every temporal block's output
layers start at zero, so a new video UNet computes each frame exactly as the image UNet it grew from
(AnimateDiff, Guo et al. 2023, Sec. 4.2 and Stable Video Diffusion's inflation): ``difflab train
--init-from`` an image package starts from its weights, and only motion remains to be learned.

Called as the sampling core expects, with video tensors::

    model(x_t [B, C, T, H, W], t, context=None, context_mask=None, class_labels=None, pooled=None)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from difflab.models.base import is_int, register_model, require
from difflab.models.layers import Attention, broadcast_time, groups_for, timestep_embedding
from difflab.models.unet import UNet, UNetConfig


@dataclass(frozen=True)
class VideoUNetConfig(UNetConfig):
    """A :class:`~difflab.models.unet.UNetConfig` plus where the temporal layers go."""

    temporal_attention_levels: tuple[int, ...] | None = None   # levels with temporal attention (None: all)
    temporal_head_dim: int = 32
    temporal_conditioning: bool = False   # temporal blocks also see the clip's time + text embedding
    temporal_text: bool = False           # ... and a reading of the prompt's tokens (needs the above)

    def __post_init__(self):
        super().__post_init__()
        levels = self.temporal_attention_levels
        require(levels is None or isinstance(levels, tuple)
                and all(is_int(i, 0) and i < len(self.channels) for i in levels),
                f"temporal_attention_levels must be None or level indices in 0..{len(self.channels) - 1}, got {levels!r}")
        require(is_int(self.temporal_head_dim), f"temporal_head_dim must be a positive integer, got {self.temporal_head_dim!r}")
        require(isinstance(self.temporal_conditioning, bool),
                f"temporal_conditioning must be true or false, got {self.temporal_conditioning!r}")
        require(isinstance(self.temporal_text, bool), f"temporal_text must be true or false, got {self.temporal_text!r}")
        require(not self.temporal_text or (self.temporal_conditioning and self.context_dim is not None),
                "temporal_text needs temporal_conditioning = true and a context_dim (text tokens)")


class TemporalBlock(nn.Module):
    """Residual mixing along time for frames ``[B*T, C, H, W]``: ``h += conv_t(SiLU(GN(h) + m))``, then
    ``h += attn_t(GN(h) + PE(frame) + m)`` over the T frames of each pixel. Both output layers start at
    zero: at initialisation the block is the identity.

    ``m`` is zero unless the block is built with ``emb_dim``: then ``m = MLP([emb, PE(frame)])``, a
    per-frame, per-clip vector from the clip's time + pooled-text embedding and the frame index (its
    last layer starts at zero). Without it the temporal layers never see the prompt: motion can only
    follow the text through the spatial layers' features, and a model learns the axis of "moving left"
    but not its sign (measured: BENCHMARKS.md, "Temporal layers that see the prompt"). Temporal layers
    that take the conditioning embedding are those of Stable Video Diffusion's temporal ResBlocks
    (Blattmann et al. 2023, "Align your Latents", Sec. 3.1); the frame-index input is ours."""

    def __init__(self, channels: int, head_dim: int, groups: int, attention: bool, emb_dim: int | None = None):
        super().__init__()
        self.motion = None
        if emb_dim is not None:
            self.motion = nn.Sequential(nn.Linear(emb_dim + channels, channels), nn.SiLU(), nn.Linear(channels, channels))
            nn.init.zeros_(self.motion[2].weight)
            nn.init.zeros_(self.motion[2].bias)
        self.norm_conv = nn.GroupNorm(groups_for(channels, groups), channels)
        self.conv = nn.Conv2d(channels, channels, (3, 1), padding=(1, 0))          # over [B, C, T, H*W]
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.attn = None
        if attention:
            self.norm_attn = nn.GroupNorm(groups_for(channels, groups), channels)
            self.attn = Attention(channels, min(head_dim, channels))
            nn.init.zeros_(self.attn.to_out.weight)
            nn.init.zeros_(self.attn.to_out.bias)

    def forward(self, h: torch.Tensor, frames: int, emb: torch.Tensor | None = None) -> torch.Tensor:
        """h [B*T, C, H, W]; ``emb`` [B*T, E], the per-frame copies of each clip's conditioning embedding."""
        BT, C, H, W = h.shape
        B = BT // frames
        video = h.view(B, frames, C, H, W).transpose(1, 2)                           # [B, C, T, H, W]
        position = timestep_embedding(torch.arange(frames, device=h.device, dtype=torch.float32), C).to(h.dtype)
        m = 0.0
        if self.motion is not None:
            if emb is None:
                raise ValueError("this temporal block is conditioned: pass the conditioning embedding")
            m = self.motion(torch.cat([emb, position.repeat(B, 1)], 1)).view(B, frames, C)   # [B, T, C]
            m = m.transpose(1, 2)[..., None, None]                                   # [B, C, T, 1, 1]
        normed = self.norm_conv(video) + m
        mixed = self.conv(torch.nn.functional.silu(normed).reshape(B, C, frames, H * W))
        video = video + mixed.view(B, C, frames, H, W)
        if self.attn is not None:
            tokens = (self.norm_attn(video) + m).permute(0, 3, 4, 2, 1).reshape(-1, frames, C)  # [B*H*W, T, C]
            tokens = self.attn(tokens + position)                                     # [B*H*W, T, C]
            video = video + tokens.view(B, H, W, frames, C).permute(0, 4, 3, 1, 2)
        return video.transpose(1, 2).reshape(BT, C, H, W).contiguous(memory_format=torch.channels_last)


class TextReading(nn.Module):
    """The temporal blocks' own reading of the prompt's tokens: cross-attention from the conditioning
    embedding (one query per frame) to the text tokens, added to the embedding the temporal blocks see.

    The pooled sentence embedding averages the tokens, so "moving left" and "moving right" differ there
    by one token in eight; this lets the temporal layers weigh the token that names the direction. Its
    output layer starts at zero: a network grown with it computes what it computed without it."""

    def __init__(self, emb_dim: int, context_dim: int, head_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(emb_dim)
        self.attn = Attention(emb_dim, min(head_dim, emb_dim), context_dim)
        nn.init.zeros_(self.attn.to_out.weight)
        nn.init.zeros_(self.attn.to_out.bias)

    def forward(self, emb: torch.Tensor, context: torch.Tensor | None, context_mask: torch.Tensor | None) -> torch.Tensor:
        """emb [N, E], context [N, L, D] -> emb + the reading [N, E] (``emb`` itself without a context)."""
        if context is None:
            return emb
        return emb + self.attn(self.norm(emb)[:, None], context, context_mask)[:, 0]


@register_model
class VideoUNet(UNet):
    """VideoUNet(in_channels, out_channels, channels=..., temporal_attention_levels=None, ...):
    a :class:`~difflab.models.unet.UNet` whose blocks are followed by :class:`TemporalBlock`\\ s."""

    config_class = VideoUNetConfig
    media = "video"

    def build(self, cfg: VideoUNetConfig) -> None:
        super().build(cfg)
        levels = range(len(cfg.channels)) if cfg.temporal_attention_levels is None else cfg.temporal_attention_levels
        depth = len(cfg.channels) - 1
        block_levels = ([i for i in range(len(cfg.channels)) for _ in range(cfg.layers_per_block)] + [depth, depth]
                        + [i for i in reversed(range(len(cfg.channels))) for _ in range(cfg.layers_per_block + 1)])
        emb_dim = self.scale_shift.in_features if cfg.temporal_conditioning else None
        self.temporal = nn.ModuleList(
            TemporalBlock(block.out_channels, cfg.temporal_head_dim, cfg.norm_groups, level in levels, emb_dim)
            for block, level in zip(self.res_blocks, block_levels))
        self.temporal_text = TextReading(emb_dim, cfg.context_dim, cfg.temporal_head_dim) if cfg.temporal_text else None
        for i, block in enumerate(self.res_blocks):
            block.temporal_index = i          # a plain attribute: it survives copy.deepcopy (an EMA copy)
        self._frames = self._emb = self._context = None
        self.to(memory_format=torch.channels_last)

    def identity_at_init(self, name: str) -> bool:
        """Tensors that may start non-zero when the network grows from an image UNet (``init_from``):
        the temporal blocks' and their text reading's, whose zero output layers keep each the identity."""
        return name.startswith(("temporal.", "temporal_text.")) or super().identity_at_init(name)

    def _block(self, res, attn, h, scale_shift, context, context_mask):
        h = super()._block(res, attn, h, scale_shift, context, context_mask)
        return self.temporal[res.temporal_index](h, self._frames, self._emb)

    def condition(self, *args, **kwargs):
        emb = super().condition(*args, **kwargs)            # [B*T, E]: each frame carries its clip's
        self._emb = emb if self.config.temporal_conditioning else None
        if self.temporal_text is not None:
            self._emb = self.temporal_text(emb, *self._context)
        return emb

    def forward(self, x, t, context=None, context_mask=None, class_labels=None, pooled=None, deep_cache=None):
        """x [B, C_in, T, H, W], t [B] or scalar -> [B, C_out, T, H, W]; the conditioning is per clip."""
        cfg = self.config
        if x.dim() != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x must be a video of shape [B, {cfg.in_channels}, T, H, W], got {list(x.shape)}")
        if deep_cache is not None:
            raise ValueError("deep_cache is for image UNets; a video UNet recomputes every step")
        B, C, T, H, W = x.shape
        frames = x.transpose(1, 2).reshape(B * T, C, H, W)
        t = broadcast_time(t, B, x.device).repeat_interleave(T)

        def per_frame(value):
            if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == B:
                return value.repeat_interleave(T, dim=0)
            return value

        if isinstance(class_labels, (list, tuple)):
            class_labels = [label for label in class_labels for _ in range(T)]
        context, context_mask = per_frame(context), per_frame(context_mask)
        self._frames, self._context = T, (context, None if context_mask is None else context_mask.bool())
        try:
            out = super().forward(frames, t, context, context_mask, per_frame(class_labels), per_frame(pooled))
        finally:
            self._frames = self._emb = self._context = None
        return out.view(B, T, cfg.out_channels, H, W).transpose(1, 2).contiguous()
