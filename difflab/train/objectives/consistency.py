"""Consistency distillation: LCM (Luo et al. 2023) and CD (Song et al. 2023), one objective.

A student f(x, sigma) learns to map every point of the teacher's probability-flow ODE trajectory to
its start. Each sample (Song et al. 2023, Alg. 2; Luo et al. 2023, Alg. 1) takes a training image
x0, a noise level t_hi = t_lo + k of the teacher's discrete steps (k: the skipping step, LCM Sec.
4.3), x_hi ~ q(x | x0) at t_hi, and one teacher solver step (DDIM or Heun, with classifier-free
guidance at scale w) from t_hi to t_lo. The loss is

    d( f_theta(x_hi, t_hi, w, c),  f_target(x_lo, t_lo, w, c) )

with f_target the EMA of the student (the trainer's EMA weights; LCM uses decay 0.95), no gradient
through it, and d the squared error or the pseudo-Huber distance sqrt(|a - b|^2 + c^2) - c,
c = 0.00054 sqrt(dim) (Song & Dhariwal 2023, "iCT", Sec. 3.3). The consistency function is
:class:`~difflab.parameterization.LatentConsistency` over the teacher's parameterization, so at
t_lo = 0 the target is x_lo itself (the boundary condition) and the student starts as its teacher.

LCM folds the guidance into the student: w ~ U[w_min, w_max] per sample is an input of the network
(``guidance=w``, a zero-initialised embedding), so sampling needs one evaluation per step. Without
an embedding (CD, LCM-LoRA) w is the fixed teacher scale and the student samples at guidance 1.
Every draw (t, w, noise) comes from the sample's own generator (run seed, global position), as the
denoising objective's do, so resumed and multi-process runs stay exact.
"""

from __future__ import annotations

import contextlib
import math

import torch

from difflab.denoisers import Denoiser, append_dims
from difflab.guidance import merge_batches
from difflab.noise import stream_seed
from difflab.schedules import NoiseSchedule
from difflab.train.config import DISTANCES, TEACHER_SOLVERS as SOLVERS
from difflab.train.objectives.base import Batch, Objective


class ConsistencyDistillation(Objective):
    """``teacher``: the frozen teacher network (``model(x_t, t, **cond)``) of ``teacher_prediction``
    on ``schedule``; ``consistency``: the student's LatentConsistency parameterization."""

    name = "consistency"

    def __init__(self, schedule: NoiseSchedule, teacher, teacher_prediction, consistency, conditioner, *,
                 guidance_min: float, guidance_max: float, embed_guidance: bool, skip: int = 20,
                 solver: str = "ddim", distance: str = "huber", seed: int = 0, channels_last: bool = False,
                 autocast=contextlib.nullcontext):
        if schedule.is_flow:
            raise ValueError("consistency distillation here steps a discrete (VP) teacher schedule; this teacher is a flow model")
        if solver not in SOLVERS or distance not in DISTANCES:
            raise ValueError(f"teacher_solver must be one of {SOLVERS} and distance one of {DISTANCES}, "
                             f"got {solver!r}, {distance!r}")
        T = schedule.num_train_timesteps
        if not (isinstance(skip, int) and 1 <= skip < T):
            raise ValueError(f"skip_steps must be an integer in [1, {T - 1}], got {skip!r}")
        self.schedule, self.conditioner, self.consistency = schedule, conditioner, consistency
        self.teacher = Denoiser(teacher, schedule, teacher_prediction)
        self.guidance = (float(guidance_min), float(guidance_max))
        self.embed_guidance, self.skip, self.solver, self.distance = embed_guidance, skip, solver, distance
        self.seed, self.channels_last, self.autocast = seed, channels_last, autocast
        self.target_weights: dict | None = None     # the trainer's EMA weights, set before each step

    def draws(self, positions: list[int], shape: tuple[int, ...]):
        """(t_hi [B] integer steps in [k, T-1], w [B], noise [B, *shape]) from each sample's generator."""
        T, generator = self.schedule.num_train_timesteps, torch.Generator()
        ts, ws, noises = [], [], []
        for index in positions:
            generator.manual_seed(stream_seed(self.seed, index, 13))
            u_t, u_w = torch.rand(2, generator=generator, dtype=torch.float64)
            ts.append(self.skip + torch.floor(u_t * (T - self.skip)).clamp(max=T - 1 - self.skip))
            ws.append(self.guidance[0] + u_w * (self.guidance[1] - self.guidance[0]))
            noises.append(torch.randn(shape, generator=generator))
        return torch.stack(ts), torch.stack(ws), torch.stack(noises)

    def guided_teacher(self, x, sigma, cond: dict, uncond: dict, w: torch.Tensor) -> torch.Tensor:
        """The teacher's x0 under CFG at per-sample scale w: x0_u + w (x0_c - x0_u) (Ho & Salimans 2022)."""
        both = self.teacher(torch.cat([x, x]), torch.cat([sigma, sigma]), **merge_batches(cond, uncond))
        x0_c, x0_u = both.chunk(2)
        return x0_u + append_dims(w, x.ndim).to(x) * (x0_c - x0_u)

    def teacher_step(self, x, sigma_hi, sigma_lo, cond, uncond, w) -> torch.Tensor:
        """One ODE step of the guided teacher from sigma_hi to sigma_lo, in VE coordinates.

        DDIM (Song et al. 2021, eq. 13) is Euler in VE coordinates: x_lo = x0 + sigma_lo eps, eps =
        (x - x0) / sigma_hi, or the unit noise x itself at the pure-noise endpoint. Heun (Karras et al.
        2022, Alg. 1) corrects it with the slope at sigma_lo; from the pure-noise endpoint, where the
        slope is undefined, it keeps the DDIM step."""
        x0 = self.guided_teacher(x, sigma_hi, cond, uncond, w)
        pure = torch.isinf(sigma_hi)
        finite_hi = torch.where(pure, torch.ones_like(sigma_hi), sigma_hi)
        eps = torch.where(append_dims(pure, x.ndim).to(x.device), x, (x - x0) / append_dims(finite_hi, x.ndim).to(x))
        x_lo = x0 + append_dims(sigma_lo, x.ndim).to(x) * eps
        if self.solver == "heun":
            eps_lo = (x_lo - self.guided_teacher(x_lo, sigma_lo, cond, uncond, w)) / append_dims(sigma_lo, x.ndim).to(x)
            heun = x + append_dims(sigma_lo - finite_hi, x.ndim).to(x) * (eps + eps_lo) / 2
            x_lo = torch.where(append_dims(pure, x.ndim).to(x.device), x_lo, heun)
        return x_lo

    def student(self, network, x, sigma, cond: dict, w: torch.Tensor, weights: dict | None = None):
        """f(x, sigma) of the student network (with ``weights`` in place of its own: the target)."""
        if weights is not None:
            module = getattr(network, "module", network)  # DDP's wrapped module

            def network(x_in, t, **kwargs):
                return torch.func.functional_call(module, weights, (x_in, t), kwargs)
        extra = {"guidance": w.to(device=x.device, dtype=x.dtype)} if self.embed_guidance else {}
        return Denoiser(network, self.schedule, self.consistency)(x, sigma, **cond, **extra)

    def loss(self, model, batch: Batch) -> torch.Tensor:
        if self.target_weights is None:
            raise RuntimeError("the consistency objective needs the target (EMA) weights: set target_weights")
        x0 = batch.x0
        t_hi, w, noise = self.draws(batch.positions, tuple(x0.shape[1:]))
        noise = noise.to(x0)
        if self.channels_last and x0.ndim == 4:
            x0, noise = (v.contiguous(memory_format=torch.channels_last) for v in (x0, noise))
        sigma_hi, sigma_lo = self.schedule.sigma(t_hi), self.schedule.sigma(t_hi - self.skip)
        pure = append_dims(torch.isinf(sigma_hi), x0.ndim).to(x0.device)
        finite = torch.where(torch.isinf(sigma_hi), torch.zeros_like(sigma_hi), sigma_hi)
        x_hi = torch.where(pure, noise, x0 + append_dims(finite, x0.ndim).to(x0) * noise)  # VE; z at sigma = inf
        cond = self.conditioner(batch.conditions, x0.device)
        with self.autocast():
            with torch.no_grad():
                uncond = self.conditioner([self.conditioner.null] * len(batch.conditions), x0.device)
                x_lo = self.teacher_step(x_hi, sigma_hi, sigma_lo, cond, uncond, w)
                target = self.student(model, x_lo, sigma_lo, cond, w, self.target_weights)
            prediction = self.student(model, x_hi, sigma_hi, cond, w)
        return consistency_distance(prediction.float(), target.float(), self.distance).mean()


def consistency_distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample distance [B]: the mean squared error, or iCT's pseudo-Huber over the whole sample."""
    diff = (a - b).flatten(1)
    if kind == "l2":
        return diff.pow(2).mean(1)
    c = 0.00054 * math.sqrt(diff.shape[1])
    return (diff.pow(2).sum(1) + c * c).sqrt() - c
