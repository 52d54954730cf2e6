"""The denoising objective: the diffusion loss of every parameterization, with per-sample randomness.

Each sample's timestep, noise and conditioning-dropout draw come from its own generator, seeded by
(run seed, global sample index): a batch is the same whatever the number of processes, the
gradient-accumulation split or an interruption, which makes resumed and multi-process runs exact.
"""

from __future__ import annotations

import contextlib
from functools import partial

import torch

from difflab.noise import stream_seed
from difflab.parameterization import get_parameterization
from difflab.schedules import NoiseSchedule
from difflab.settings import TIMESTEP_SAMPLINGS, WEIGHTINGS
from difflab.train.objectives.base import Batch, Objective
from difflab.train.objectives.reconstruction import objects_distance



def draw_per_sample(seed: int, indices: list[int], shape: tuple[int, ...], schedule: NoiseSchedule,
                    timestep_sampling: str, logit_mean: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t [B] model times, noise [B, *shape], u [B] uniforms for conditioning dropout). ``logit_normal``
    draws u = sigmoid(m + n), n ~ N(0, 1): SD3 (Esser et al. 2024), eq. 19 with s = 1 and m = ``logit_mean``
    (m > 0: more of the noisy timesteps, where a sample's layout and motion are decided). ``terminal``
    puts every sample at pure noise, the first time of a one-step sampler: reflow's distillation step
    (Liu et al. 2022, Sec. 2.3), which fits the one-step map z -> x1 of the couplings."""
    generator = torch.Generator()
    ts, noises, uniforms = [], [], []
    for index in indices:
        generator.manual_seed(stream_seed(seed, index, 7))
        uniforms.append(torch.rand((), generator=generator, dtype=torch.float64))
        if timestep_sampling == "terminal":
            u = torch.tensor(1.0, dtype=torch.float64)
        elif timestep_sampling == "logit_normal":
            u = torch.sigmoid(logit_mean + torch.randn((), generator=generator, dtype=torch.float64))
        else:
            u = torch.rand((), generator=generator, dtype=torch.float64)
        ts.append(_model_time(u, schedule))
        noises.append(torch.randn(shape, generator=generator))
    return torch.stack(ts), torch.stack(noises), torch.stack(uniforms)


def _model_time(u: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """u in [0, 1] -> model time: continuous for flow, an integer training step for discrete VP."""
    T = schedule.num_train_timesteps
    if schedule.is_flow:   # off the exact endpoints (one of alpha/sigma_t is 0), but terminal's u = 1: x_t = z
        return (u if u == 1 else u.clamp(1e-5, 1 - 1e-5)) * T
    return (u * T).floor().clamp(0, T - 1)


def loss_weights(schedule: NoiseSchedule, t: torch.Tensor, prediction_type, weighting: str,
                 snr_gamma: float) -> torch.Tensor:
    """Per-sample weights on the prediction-space MSE.

    uniform: 1 (the plain objective of each parameterisation). min_snr: Hang et al. (2023), eq. 10:
    the x0-space weight min(SNR, gamma), mapped to prediction space by c_out^2 (x0 = c_skip x_in +
    c_out F), i.e. min(SNR, gamma)/SNR for eps and min(SNR, gamma)/(SNR + 1) for v, as in the paper.
    min_snr_plus_one: the same clamp applied to SNR + 1, the x0-space weight of the plain
    v objective (Salimans & Ho 2022, sec. 4; Kingma & Gao 2023, table 1): for v it is
    min(1, gamma / (SNR + 1)), which keeps weight 1 where the noise dominates, the steps that decide
    the layout, instead of min-SNR's weight ~SNR that vanishes towards the pure-noise end.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"loss weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if weighting == "uniform":
        return torch.ones_like(t, dtype=torch.float64)
    alpha, sigma_t = schedule.alpha_sigma(schedule.sigma(t))
    snr = (alpha / sigma_t) ** 2
    clamped = snr + 1 if weighting == "min_snr_plus_one" else snr
    x0_weight = torch.minimum(clamped, torch.full_like(snr, snr_gamma))
    weight = get_parameterization(prediction_type).loss_weight(x0_weight, alpha, sigma_t)
    return torch.where(torch.isfinite(weight), weight, torch.zeros_like(weight))


def diffusion_loss(model, x0: torch.Tensor, cond: dict, t: torch.Tensor, noise: torch.Tensor,
                   schedule: NoiseSchedule, prediction_type, weighting: str = "uniform",
                   snr_gamma: float = 5.0, distance: str = "l2", perceptual=None, teacher=None) -> torch.Tensor:
    """Weighted MSE between the model's output at x_in and the target of its parameterization
    (``distance="l1"``: the mean absolute error, whose minimiser is each pixel's median, not its mean).
    ``perceptual = (weight, d)`` adds ``weight * d(x0_hat, x0)`` per sample, with x0_hat the model's
    estimate of x0 (``c_skip x_in + c_out F``): a distance on the image, not on the prediction. ``teacher``:
    a callable ``(x_in, t) -> target`` that replaces the parameterization's target (a frozen network's
    prediction, :class:`difflab.train.image_prompt.SceneTeacher`)."""
    parameterization = get_parameterization(prediction_type)
    noise = noise.to(x0)
    alpha, sigma_t = schedule.native_scales(t, x0)
    if parameterization.native:
        x_in = alpha * x0 + sigma_t * noise                      # x_t, q(x_t | x0)
    else:
        x_in = parameterization.c_in(alpha, sigma_t) * (x0 + sigma_t / alpha * noise)
    t_in = t.to(device=x0.device, dtype=torch.float32)
    target = parameterization.target(x0, noise, alpha, sigma_t) if teacher is None else teacher(x_in, t_in)
    prediction = model(x_in, t_in, **cond)
    error = prediction.float() - target.float()
    per_sample = (error.abs() if distance == "l1" else error.pow(2)).mean(dim=tuple(range(1, x0.ndim)))
    if perceptual is not None:
        weight, image_distance = perceptual
        c_skip, c_out = parameterization.coefficients(alpha, sigma_t)
        estimate = c_skip * x_in.float() + c_out * prediction.float()        # x0_hat [B, C, H, W]
        per_sample = per_sample + weight * image_distance(estimate, x0.float())
    weights = loss_weights(schedule, t, parameterization, weighting, snr_gamma).to(per_sample)
    return (weights * per_sample).mean()


class DenoisingObjective(Objective):
    """Denoising score matching in the model's parameterization (Ho et al. 2020, eq. 14, and its
    v / x0 / flow forms), with a loss weighting, a timestep distribution and conditioning dropout
    (Ho & Salimans 2022) for classifier-free guidance."""

    name = "denoising"

    def __init__(self, schedule: NoiseSchedule, prediction_type, conditioner, *, weighting: str = "uniform",
                 snr_gamma: float = 5.0, timestep_sampling: str = "uniform", cond_dropout: float = 0.1,
                 seed: int = 0, channels_last: bool = False, autocast=contextlib.nullcontext, logit_mean: float = 0.0):
        if timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise ValueError(f"timestep_sampling must be one of {TIMESTEP_SAMPLINGS}, got {timestep_sampling!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"loss weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.schedule, self.parameterization = schedule, get_parameterization(prediction_type)
        self.conditioner, self.weighting, self.snr_gamma = conditioner, weighting, snr_gamma
        self.timestep_sampling, self.cond_dropout, self.seed = timestep_sampling, cond_dropout, seed
        self.channels_last, self.autocast, self.logit_mean = channels_last, autocast, logit_mean
        self.distance, self.perceptual = "l2", None
        self.teacher = None   # (x_in, t, positions, conditions) -> target; None: the parameterization's target

    def loss(self, model, batch: Batch) -> torch.Tensor:
        x0 = batch.x0
        t, noise, u = draw_per_sample(self.seed, batch.positions, tuple(x0.shape[1:]), self.schedule,
                                      self.timestep_sampling, self.logit_mean)
        if batch.noise is not None:   # a coupled pair (reflow): its own noise, not a fresh draw
            noise = batch.noise.to(device="cpu", dtype=noise.dtype)
        if self.channels_last and x0.ndim == 4:
            x0 = x0.contiguous(memory_format=torch.channels_last)
            noise = noise.contiguous(memory_format=torch.channels_last)
        conditions = self.conditioner.dropped(batch.conditions, (u < self.cond_dropout).tolist())
        cond = self.conditioner(conditions, x0.device)
        teacher = None if self.teacher is None else partial(self.teacher, positions=batch.positions,
                                                            conditions=conditions)
        with self.autocast():
            return diffusion_loss(model, x0, cond, t, noise.to(x0.device), self.schedule, self.parameterization,
                                  self.weighting, self.snr_gamma, self.distance, self.perceptual, teacher)


class ReflowObjective(DenoisingObjective):
    """Rectified flow on coupled pairs (Liu et al. 2022, "Flow straight and fast", eq. 1 and Alg. 1):
    each training image x1 was made by the teacher's ODE from the noise z it comes with, and the
    student regresses the straight path's velocity z - x1 at x_t = (1 - t) x1 + t z, which is the
    denoising objective of the flow parameterization with the noise fixed to the pair's (the batch's
    ``noise``). Training on these couplings (reflow) straightens the paths, so few Euler steps follow
    them; the teacher's guidance is in the couplings, so the student samples at guidance 1.

    ``distance="l1"`` regresses each pixel's median instead of its mean. Where a one-step student
    (``timestep_sampling="terminal"``) cannot tell from z whether an object belongs in a place, the
    mean draws a faint copy of it there and the median draws nothing.

    ``perceptual_weight > 0`` adds the LPIPS-style distance in the frozen ``shapes-objects`` encoder
    (Zhang et al. 2018, eq. 1) between the student's estimate of x1 and x1 itself, the kind of loss
    InstaFlow (Liu et al. 2023) trains its one-step student with: a missing small object or a wrong
    shape costs little in pixels and much in it. The samples must be RGB images (or a cascade's latent,
    which is one)."""

    name = "reflow"

    def __init__(self, *args, distance: str = "l2", perceptual_weight: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        if distance not in ("l2", "l1"):
            raise ValueError(f"reflow's distance must be l2 or l1, got {distance!r}")
        if not (isinstance(perceptual_weight, (int, float)) and perceptual_weight >= 0):
            raise ValueError(f"perceptual_weight must be a non-negative number, got {perceptual_weight!r}")
        self.distance = distance
        if perceptual_weight > 0:
            self.perceptual = (float(perceptual_weight), objects_distance())

    def loss(self, model, batch: Batch) -> torch.Tensor:
        if batch.noise is None:
            raise ValueError("reflow trains on coupled (noise, sample) pairs: the batch has no noise")
        if self.perceptual is not None:
            if batch.x0.ndim != 4 or batch.x0.shape[1] != 3:
                raise ValueError(f"perceptual_weight needs RGB images (the shapes-objects encoder's input); "
                                 f"these samples have shape {tuple(batch.x0.shape[1:])}")
            self.perceptual[1].to(batch.x0.device)
        return super().loss(model, batch)
