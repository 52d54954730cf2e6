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

    def __post_init__(self):
        super().__post_init__()
        levels = self.temporal_attention_levels
        require(levels is None or isinstance(levels, tuple)
                and all(is_int(i, 0) and i < len(self.channels) for i in levels),
                f"temporal_attention_levels must be None or level indices in 0..{len(self.channels) - 1}, got {levels!r}")
        require(is_int(self.temporal_head_dim), f"temporal_head_dim must be a positive integer, got {self.temporal_head_dim!r}")


class TemporalBlock(nn.Module):
    """Residual mixing along time for frames ``[B*T, C, H, W]``: ``h += conv_t(SiLU(GN(h)))``, then
    ``h += attn_t(GN(h) + PE(frame))`` over the T frames of each pixel. Both output layers start at
    zero: at initialisation the block is the identity."""

    def __init__(self, channels: int, head_dim: int, groups: int, attention: bool):
        super().__init__()
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

    def forward(self, h: torch.Tensor, frames: int) -> torch.Tensor:
        BT, C, H, W = h.shape
        video = h.view(BT // frames, frames, C, H, W).transpose(1, 2)                # [B, C, T, H, W]
        mixed = self.conv(torch.nn.functional.silu(self.norm_conv(video)).reshape(BT // frames, C, frames, H * W))
        video = video + mixed.view(BT // frames, C, frames, H, W)
        if self.attn is not None:
            tokens = self.norm_attn(video).permute(0, 3, 4, 2, 1).reshape(-1, frames, C)  # [B*H*W, T, C]
            position = timestep_embedding(torch.arange(frames, device=h.device, dtype=torch.float32), C)
            tokens = self.attn(tokens + position.to(tokens.dtype))                    # [B*H*W, T, C]
            B = BT // frames
            video = video + tokens.view(B, H, W, frames, C).permute(0, 4, 3, 1, 2)
        return video.transpose(1, 2).reshape(BT, C, H, W).contiguous(memory_format=torch.channels_last)


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
        self.temporal = nn.ModuleList(
            TemporalBlock(block.out_channels, cfg.temporal_head_dim, cfg.norm_groups, level in levels)
            for block, level in zip(self.res_blocks, block_levels))
        for i, block in enumerate(self.res_blocks):
            block.temporal_index = i          # a plain attribute: it survives copy.deepcopy (an EMA copy)
        self._frames = None
        self.to(memory_format=torch.channels_last)

    def identity_at_init(self, name: str) -> bool:
        """Tensors that may start non-zero when the network grows from an image UNet (``init_from``):
        the temporal blocks', whose zero output layers keep each block the identity."""
        return name.startswith("temporal.") or super().identity_at_init(name)

    def _block(self, res, attn, h, scale_shift, context, context_mask):
        h = super()._block(res, attn, h, scale_shift, context, context_mask)
        return self.temporal[res.temporal_index](h, self._frames)

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
        self._frames = T
        try:
            out = super().forward(frames, t, per_frame(context), per_frame(context_mask), per_frame(class_labels),
                                  per_frame(pooled))
        finally:
            self._frames = None
        return out.view(B, T, cfg.out_channels, H, W).transpose(1, 2).contiguous()
