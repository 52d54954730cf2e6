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


def trained_weights(model: torch.nn.Module, config) -> list[torch.nn.Parameter]:
    """The weights the optimiser moves; the others are frozen here. ``config.train_only``: those whose
    names start with it (e.g. ``temporal``: a video UNet's motion blocks alone, AnimateDiff's recipe,
    Guo et al. 2023); ``config.decoder_only``: all but the VAE's encoder (the latents stay valid)."""
    if config.train_only:
        chosen = [p for name, p in model.named_parameters() if name.startswith(config.train_only)]
        if not chosen:
            parts = sorted({name.split(".")[0] for name, _ in model.named_parameters()})
            raise ValueError(f"train_only={config.train_only!r} names no weight of this {type(model).__name__}; "
                             f"its top-level parts: {parts}")
        model.requires_grad_(False)
        for p in chosen:
            p.requires_grad_(True)
    if config.decoder_only:
        for part in (model.encoder, model.quant_conv):
            if part is not None:
                part.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


@torch.no_grad()
def ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    for name, value in model.state_dict().items():
        if value.dtype.is_floating_point:
            ema[name].lerp_(value.detach().to(ema[name]), 1 - decay)
        else:
            ema[name].copy_(value)
