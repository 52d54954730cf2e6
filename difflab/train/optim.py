"""Optimiser schedules and the EMA of the weights."""

from __future__ import annotations

import math

import torch


def lr_at(step: int, base_lr: float, warmup: int, schedule: str, max_steps: int) -> float:
    """Linear warm-up, then constant or cosine decay to 0 (Loshchilov & Hutter 2017)."""
    if warmup and step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return base_lr * 0.5 * (1 + math.cos(math.pi * progress))


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """EMA decay with warm-up min(decay, (1 + n) / (10 + n)) (as in Song et al.'s score_sde / TF's EMA)."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


@torch.no_grad()
def ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    for name, value in model.state_dict().items():
        if value.dtype.is_floating_point:
            ema[name].lerp_(value.detach().to(ema[name]), 1 - decay)
        else:
            ema[name].copy_(value)
