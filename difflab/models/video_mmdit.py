"""Video MMDiT: SD3's joint text-image transformer on spacetime patches (one sequence for the whole clip).

Each frame is cut into ``p x p`` patches as in :class:`~difflab.models.mmdit.MMDiT`; the patches of all
T frames form one sequence of ``T * (H/p) * (W/p)`` tokens, and every joint block attends over the text
tokens and every patch of every frame at once. This is the "spacetime patches" design of Sora's
technical report (Brooks et al. 2024) and of the full-attention variant of Latte (Ma et al. 2024,
Sec. 3.1, variant 1), with MMDiT's two streams (Esser et al. 2024, Fig. 2) in place of DiT blocks, so
the prompt's tokens sit in the same attention as the motion they describe. A factorised network
(:class:`~difflab.models.video_unet.VideoUNet`) instead mixes time only at fixed pixels; BENCHMARKS.md
("Spacetime patches against factorised space-time") compares the two at equal CPU budget.

A token's position is the sum of MMDiT's 2-D sin-cos code of its patch and a 1-D sin-cos code of its
frame (Vaswani et al. 2017, Sec. 3.5) over the full width, computed, not stored: the network has
exactly an MMDiT's weights and loads any clip length up to ``max_frames``. Called as::

    model(x [B, C, T, H, W], t, context, pooled, context_mask=None) -> [B, C_out, T, H, W]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from difflab.models.base import is_int, register_model, require
from difflab.models.layers import timestep_embedding
from difflab.models.mmdit import MMDiT, MMDiTConfig


@dataclass(frozen=True)
class VideoMMDiTConfig(MMDiTConfig):
    """An :class:`~difflab.models.mmdit.MMDiTConfig` plus the longest clip it takes; small defaults for
    32x32 clips of 8 frames (patch 4: 512 tokens a clip)."""

    in_channels: int = 3
    patch_size: int = 4
    hidden_size: int = 192
    depth: int = 6
    num_heads: int = 6
    context_dim: int = 384
    pooled_dim: int = 384
    pos_embed_max_size: int = 16
    sample_size: int = 32
    max_frames: int = 32

    def __post_init__(self):
        super().__post_init__()
        require(is_int(self.max_frames), f"max_frames must be a positive integer, got {self.max_frames!r}")


def frame_code(frames: int, dim: int) -> torch.Tensor:
    """The 1-D sin-cos code [frames, dim] of frame indices 0..frames-1, sines first: ``[sin(k w_i),
    cos(k w_i)]`` with ``w_i = 10000^(-i / (dim/2))`` (Vaswani et al. 2017, Sec. 3.5);
    :func:`~difflab.models.layers.timestep_embedding` with its halves swapped."""
    return timestep_embedding(torch.arange(frames, dtype=torch.float32), dim).roll(dim // 2, dims=1)  # [T, dim]


@register_model
class VideoMMDiT(MMDiT):
    """VideoMMDiT(in_channels=3, patch_size=4, hidden_size=192, depth=6, ...): an :class:`MMDiT` whose
    sequence holds the patches of every frame of a clip; see the module docstring."""

    config_class = VideoMMDiTConfig
    media = "video"

    def check_input(self, x, context, pooled, context_mask) -> None:
        cfg = self.config
        require(x.dim() == 5 and x.shape[1] == cfg.in_channels,
                f"x must be a video of shape [B, {cfg.in_channels}, T, H, W], got {list(x.shape)}")
        require(x.shape[2] <= cfg.max_frames, f"the clip has {x.shape[2]} frames; this network takes at most "
                                              f"max_frames={cfg.max_frames}")
        super().check_input(x[:, :, 0], context, pooled, context_mask)    # sides and conditioning, on one frame

    def forward(self, x, t, context=None, pooled=None, context_mask=None, block_cache=None):
        """x [B, C, T, H, W], t [B] or scalar (model time), context [B, L, context_dim], pooled
        [B, pooled_dim], context_mask [B, L] or None -> [B, C_out, T, H, W]; ``block_cache`` as MMDiT's."""
        cfg, p = self.config, self.config.patch_size
        self.check_input(x, context, pooled, context_mask)
        B, C, T, H, W = x.shape
        h, w = H // p, W // p
        frames = x.transpose(1, 2).reshape(B * T, C, H, W)                               # [B*T, C, H, W]
        tokens = self.patchify(frames).flatten(2).transpose(1, 2)                       # [B*T, h*w, D]
        where = self.positions(h, w)[None] + frame_code(T, cfg.hidden_size).to(x.device)[:, None]  # [T, h*w, D]
        tokens = (tokens.view(B, T, h * w, -1) + where.to(tokens.dtype)).reshape(B, T * h * w, -1)  # [B, T*h*w, D]
        out = self.transform(tokens, t, context, pooled, context_mask, block_cache)     # [B, T*h*w, p*p*C_out]
        out = out.view(B, T, h, w, p, p, cfg.output_channels)                           # [B, T, h, w, p, p, C]
        return out.permute(0, 6, 1, 2, 4, 3, 5).reshape(B, cfg.output_channels, T, H, W)  # [B, C, T, H, W]
