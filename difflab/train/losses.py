"""The diffusion training loss for every prediction type, with per-sample randomness.

Each sample's timestep, noise and conditioning-dropout draw come from its own generator, seeded by
(run seed, global sample index): a batch is the same whatever the number of processes, the
gradient-accumulation split or an interruption, which makes resumed and multi-process runs exact.
"""

from __future__ import annotations

import math

import torch

from difflab.denoisers import Denoiser
from difflab.noise import stream_seed
from difflab.schedules import NoiseSchedule


def draw_per_sample(seed: int, indices: list[int], shape: tuple[int, ...], schedule: NoiseSchedule,
                    timestep_sampling: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t [B] model times, noise [B, *shape], u [B] uniforms for conditioning dropout)."""
    generator = torch.Generator()
    ts, noises, uniforms = [], [], []
    for index in indices:
        generator.manual_seed(stream_seed(seed, index, 7))
        uniforms.append(torch.rand((), generator=generator, dtype=torch.float64))
        if timestep_sampling == "logit_normal":  # SD3 (Esser et al. 2024), eq. 19 with m = 0, s = 1
            u = torch.sigmoid(torch.randn((), generator=generator, dtype=torch.float64))
        else:
            u = torch.rand((), generator=generator, dtype=torch.float64)
        ts.append(_model_time(u, schedule))
        noises.append(torch.randn(shape, generator=generator))
    return torch.stack(ts), torch.stack(noises), torch.stack(uniforms)


def _model_time(u: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """u in [0, 1) -> model time: continuous for flow, an integer training step for discrete VP."""
    T = schedule.num_train_timesteps
    if schedule.is_flow:
        return (u.clamp(1e-5, 1 - 1e-5) * T)  # avoid the exact endpoints, where one of alpha/sigma_t is 0
    return (u * T).floor().clamp(0, T - 1)


def loss_weights(schedule: NoiseSchedule, t: torch.Tensor, prediction_type: str, weighting: str,
                 snr_gamma: float) -> torch.Tensor:
    """Per-sample weights on the prediction-space MSE.

    uniform: 1 (the plain objective of each parameterisation). min_snr: Hang et al. (2023), eq. 10:
    the x0-space weight min(SNR, gamma), mapped to prediction space by c_out^2 (x0 = c_x x_t + c_out
    out), i.e. min(SNR, gamma)/SNR for eps and min(SNR, gamma)/(SNR + 1) for v, as in the paper.
    min_snr_plus_one: the same clamp applied to SNR + 1, the x0-space weight of the plain
    v objective (Salimans & Ho 2022, sec. 4; Kingma & Gao 2023, table 1): for v it is
    min(1, gamma / (SNR + 1)), which keeps weight 1 where the noise dominates, the steps that decide
    the layout, instead of min-SNR's weight ~SNR that vanishes towards the pure-noise end.
    """
    if weighting == "uniform":
        return torch.ones_like(t, dtype=torch.float64)
    alpha, sigma_t = schedule.alpha_sigma(schedule.sigma(t))
    snr = (alpha / sigma_t) ** 2
    _, c_out = Denoiser(lambda *a: None, schedule, prediction_type).output_coefficients(alpha, sigma_t)
    clamped = snr + 1 if weighting == "min_snr_plus_one" else snr
    weight = torch.minimum(clamped, torch.full_like(snr, snr_gamma)) * c_out**2
    return torch.where(torch.isfinite(weight), weight, torch.zeros_like(weight))


def diffusion_loss(model, x0: torch.Tensor, cond: dict, t: torch.Tensor, noise: torch.Tensor,
                   schedule: NoiseSchedule, prediction_type: str, weighting: str = "uniform",
                   snr_gamma: float = 5.0) -> torch.Tensor:
    """Weighted MSE between the model's prediction at x_t and the target of its prediction type."""
    noise = noise.to(x0)
    x_t = schedule.add_noise(x0, noise, t)
    target = schedule.target(x0, noise, t, prediction_type)
    prediction = model(x_t, t.to(device=x0.device, dtype=torch.float32), **cond)
    per_sample = (prediction.float() - target.float()).pow(2).mean(dim=tuple(range(1, x0.ndim)))
    weights = loss_weights(schedule, t, prediction_type, weighting, snr_gamma).to(per_sample)
    return (weights * per_sample).mean()


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
