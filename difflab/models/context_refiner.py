"""A small trainable transformer over a frozen text encoder's token states, run before cross-attention.

Why: the MiniLM probe (BENCHMARKS.md, "MiniLM probe") found that which of two objects goes on top is not
linear in any single token's state: it is word order times the relation word, which a probe recovers
only by combining tokens through a nonlinearity. A cross-attention read can only place an object whose
token says where it goes, so these layers mix the tokens first (issue 13's "text-side capacity").

The refiner works in a narrow stream: ``down`` (D -> width), ``layers`` pre-norm transformer layers
(self-attention over the prompt's tokens, Vaswani et al. 2017, eq. 1; pre-LN, Xiong et al. 2020), then
``up`` (width -> D) added to the states. ``up`` starts at zero, so a network grown with a refiner
computes exactly what it computed without one.
"""

from __future__ import annotations

import torch
from torch import nn

from difflab.models.layers import Attention


class ContextRefiner(nn.Module):
    """ContextRefiner(dim, layers, width=128, head_dim=32): ``context [B, L, dim]`` -> refined ``[B, L, dim]``."""

    def __init__(self, dim: int, layers: int, width: int = 128, head_dim: int = 32, mlp_ratio: int = 2):
        super().__init__()
        self.down = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "norm1": nn.LayerNorm(width), "attn": Attention(width, min(head_dim, width)),
            "norm2": nn.LayerNorm(width),
            "mlp": nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width)),
        }) for _ in range(layers))
        self.norm_out = nn.LayerNorm(width)
        self.up = nn.Linear(width, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, context: torch.Tensor, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Padding (``context_mask`` False) is never attended to; its rows are refined but stay masked
        in the cross-attention that reads them."""
        h = self.down(context)
        mask = None if context_mask is None else context_mask.bool()
        for block in self.blocks:
            h = h + block["attn"](block["norm1"](h), context_mask=mask)
            h = h + block["mlp"](block["norm2"](h))
        return context + self.up(self.norm_out(h))
