"""First-block caching for difflab's transformers (DiT, MMDiT and what is built on them): skip every
block after the first while the first block's output changes little from step to step.

TeaCache (Liu et al. 2024, "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model",
Sec. 3-4) showed that a cheap indicator of how much a transformer's input has changed since the last
full evaluation predicts how much its output would change, and reuses the output *residual* (output
minus input) while the accumulated change stays below a threshold. The first-block variant takes as
the indicator the residual of the first block itself:

    r_1 = block_1(h) - h,   d = mean |r_1 - r_1*| / mean |r_1*|

where r_1* is the first block's residual at the last full evaluation. While d < ``threshold`` the
call returns ``block_1(h) + R*``, R* being the residual of the remaining blocks at that evaluation;
otherwise every block runs and r_1*, R* are replaced. Because r_1* is only replaced by a full call,
small changes add up until one exceeds the threshold. With guidance, the conditional and
unconditional halves are one batch and are decided together. Only the image tokens are cached; text
tokens after the first block feed nothing but the skipped blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


class BlockCacheState:
    """What a transformer reuses across the calls of one sampling run. ``threshold`` in (0, 1]: the
    largest relative change of the first block's residual that still reuses the cache."""

    def __init__(self, threshold: float):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
                math.isfinite(threshold) and 0 < threshold <= 1):
            raise ValueError(f"block_cache must be a number in (0, 1] (the relative change of the first block's "
                             f"output below which the other blocks are skipped), got {threshold!r}")
        self.threshold = float(threshold)
        self.first = self.rest = None
        self.full_calls = self.cached_calls = 0

    def reuse(self, first: torch.Tensor) -> bool:
        """Whether a call whose first block's residual is ``first`` may reuse the cached residual."""
        if self.first is None or self.first.shape != first.shape:
            return False
        change = (first - self.first).abs().mean() / self.first.abs().mean().clamp_min(1e-12)
        return bool(change < self.threshold)

    def store(self, first: torch.Tensor, rest: torch.Tensor) -> None:
        self.first, self.rest = first.detach(), rest.detach()


def run_blocks(tokens: torch.Tensor, first: Callable, rest: Callable, state: BlockCacheState | None) -> torch.Tensor:
    """Image tokens after every block: ``first(tokens) -> (tokens, carry)`` runs the first block (``carry``:
    whatever else the next blocks need, e.g. the text tokens), ``rest(tokens, carry) -> tokens`` the
    others. Without a ``state`` both always run."""
    h1, carry = first(tokens)
    if state is None:
        return rest(h1, carry)
    residual = h1 - tokens
    if state.reuse(residual):
        state.cached_calls += 1
        return h1 + state.rest
    out = rest(h1, carry)
    state.full_calls += 1
    state.store(residual, out - h1)
    return out
