"""Distillation (``difflab distill``): a student trained from a teacher package by the trainer's loop.

``distill_config(method, teacher, overrides)`` builds the :class:`TrainConfig` of a method from the
teacher's ``config.json`` (its data, network, schedule and text encoder) and the method's recipe
below; it needs no torch. The rest runs inside :class:`~difflab.train.trainer.Trainer`: the frozen
teacher, the method's objective, reflow's couplings and the student's package sections.

    lcm     latent consistency distillation (Luo et al. 2023): the teacher's guided DDIM step, the CFG
            scale embedded in the student (``guidance_embedding``), 4-step ``lcm`` sampling; with
            ``--lora-rank`` the student is an LCM-LoRA on the teacher (scale fixed, no embedding)
    cd      consistency distillation (Song et al. 2023, Alg. 2): a Heun teacher step at a fixed scale
    reflow  rectified flow on the guided teacher's couplings (Liu et al. 2022): a flow student, Euler
            on a ``trailing`` grid (t = 1, 1 - 1/n, ...): the flow ``linspace`` grid (diffusers') ends
            on t = 0.001, which spends a whole step of a few-step sampler on nothing
"""

from __future__ import annotations

from pathlib import Path

from difflab.train.config import DISTILL_METHODS, TrainConfig
from difflab.train.lineage import package_fields, read_header

COMMON = dict(cond_dropout=0.0, batch_size=32, max_steps=2000, checkpoint_every=100, lr_warmup=50,
              lr_schedule="constant", sample_every=0, loss_weighting="uniform")
RECIPES = {
    # LCM: EMA target decay 0.95 (Luo et al. 2023, Sec. 5.1), w in [1, 4] around the teacher's best 2-3
    "lcm": dict(prediction_type="lcm", lr=1e-4, ema_decay=0.95, ema_warmup=False, teacher_solver="ddim",
                skip_steps=20, distance="huber", guidance_min=1.0, teacher_guidance=4.0),
    "cd": dict(prediction_type="lcm", lr=1e-4, ema_decay=0.95, ema_warmup=False, teacher_solver="heun",
               skip_steps=20, distance="huber"),
    "reflow": dict(prediction_type="flow", schedule="flow", flow_shift=1.0, lr=2e-4, ema_decay=0.999,
                   couplings=4096, teacher_steps=20, distance="l2"),
}
STUDENT_SAMPLING = {"lcm": {"sampler": "lcm", "steps": 4, "spacing": "trailing"},
                    "cd": {"sampler": "lcm", "steps": 2, "spacing": "trailing", "guidance_scale": 1.0},
                    "reflow": {"sampler": "euler", "steps": 4, "spacing": "trailing", "guidance_scale": 1.0}}


def teacher_header(teacher: str) -> tuple[Path, dict]:
    """The teacher's folder and checked config.json; one clear line when it is not a difflab package."""
    folder, header = read_header(teacher, "--teacher")
    path = folder / "config.json"
    for section in ("diffusion", "data", "conditioning", "config"):
        if not isinstance(header.get(section), dict):
            raise ValueError(f"--teacher: {path} has no '{section}' section; is it a denoiser made by difflab train?")
    if header["data"].get("dataset") in (None, "folder"):
        raise ValueError("--teacher: distillation trains on the teacher's own procedural dataset; this teacher's "
                         f"dataset is {header['data'].get('dataset')!r}")
    return folder, header


def distill_config(method: str, teacher: str, overrides: dict) -> TrainConfig:
    """The student's training configuration: the teacher's data and network, the method's recipe, then
    ``overrides`` (flags)."""
    if method not in DISTILL_METHODS:
        raise ValueError(f"--method must be one of {', '.join(DISTILL_METHODS)}, got {method!r}")
    folder, header = teacher_header(teacher)
    diffusion, schedule = header["diffusion"], header["diffusion"].get("schedule", {})
    if not isinstance(diffusion.get("prediction_type"), str):
        raise ValueError(f"--teacher: {folder} is itself a distilled student ({diffusion.get('prediction_type')}); "
                         "distil from a diffusion model")
    if method != "reflow" and schedule.get("kind") == "flow":
        raise ValueError(f"--method {method} distils a discrete-time (VP) teacher; {folder} is a flow model: "
                         "use --method reflow")
    latent = isinstance(header.get("codec"), dict) and header["codec"].get("type") == "vae"
    model = dict(package_fields(folder, header)["model"])
    lora = bool(overrides.get("lora_rank"))
    if method == "lcm" and not lora:
        if model["class_name"] != "UNet":
            raise ValueError(f"--method lcm embeds the guidance scale in difflab's UNet; this teacher is a "
                             f"{model['class_name']} (use --lora-rank for an LCM-LoRA, or --method reflow)")
        model["guidance_embedding"] = True
    teacher_scale = header.get("sampling", {}).get("guidance_scale", 3.0)
    values = {**COMMON, **RECIPES[method], "distill": method, "teacher": teacher, "init_from": teacher,
              "dataset": header["data"]["dataset"], "resolution": header["data"]["resolution"], "model": model,
              **({"vae": str(folder)} if latent else {})}   # a latent teacher's VAE (its vae/): the same latents
    if method != "reflow":
        values.update(schedule=schedule.get("kind", "cosine"),
                      rescale_zero_terminal_snr=bool(schedule.get("rescale_zero_terminal_snr", False)))
    if method == "cd" or method == "reflow" or lora:   # no embedding: the teacher's scale is folded in
        values.update(teacher_guidance=teacher_scale, guidance_min=teacher_scale)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values.get("guidance_min", 1.0) > values.get("teacher_guidance", 3.0) and "guidance_min" not in overrides:
        values["guidance_min"] = values["teacher_guidance"]
    return TrainConfig(**values)


def student_sampling(config: TrainConfig) -> dict:
    """The student package's sampling defaults: its sampler and steps, guidance in the embedding (the
    middle of w's range, rounded) or 1 (folded in)."""
    section = dict(STUDENT_SAMPLING[config.distill])
    if config.timestep_sampling == "terminal":   # trained at pure noise only: one step is what it learned
        section["steps"] = 1
    if config.distill == "lcm":
        embedded = config.model.get("guidance_embedding", False)
        section["guidance_scale"] = round((config.guidance_min + config.teacher_guidance) / 2, 1) if embedded else 1.0
    return section


class Teacher:
    """The frozen teacher of a distillation run: its network, schedule and parameterization."""

    def __init__(self, config: TrainConfig, conditioner, device):
        import torch

        from difflab.models.package import load_package
        from difflab.schedules import NoiseSchedule
        folder, header = teacher_header(config.teacher)
        if header["conditioning"].get("encoder") != conditioner.spec:
            raise ValueError(f"--teacher: its text encoder {header['conditioning'].get('encoder')} differs from the "
                             f"student's {conditioner.spec}")
        self.folder, self.header = folder, header
        self.schedule = NoiseSchedule.from_config(header["diffusion"]["schedule"])
        self.prediction_type = header["diffusion"]["prediction_type"]
        self.model = load_package(folder).model.to(device).eval().requires_grad_(False)
        if not torch.cuda.is_available():
            self.model = self.model.to(memory_format=torch.channels_last)

    def solver(self, conditioner, guidance: float, steps: int, device):
        """``solve(z, captions) -> x1``: the teacher's deterministic guided ODE (DEIS) from unit noise z."""
        from difflab.sampling import sample

        def solve(z, captions):
            null = [conditioner.null] * len(captions)
            return sample(self.model, self.schedule, self.prediction_type, "deis", steps, noise=z.to(device),
                          cond=conditioner(captions, device), uncond=conditioner(null, device),
                          guidance_scale=guidance, spacing=self.schedule.default_spacing)
        return solve


def make_distill_objective(config: TrainConfig, teacher: Teacher, schedule, conditioner, accelerator,
                           channels_last: bool):
    """The objective of ``config.distill`` (lcm / cd: consistency distillation; reflow: rectified flow)."""
    from difflab.parameterization import LatentConsistency
    from difflab.train.objectives import OBJECTIVES
    if config.distill == "reflow":
        return OBJECTIVES["reflow"](schedule, "flow", conditioner, weighting="uniform",
                                    timestep_sampling=config.timestep_sampling, cond_dropout=0.0, seed=config.seed,
                                    distance=config.distance, perceptual_weight=config.perceptual_weight,
                                    channels_last=channels_last, autocast=accelerator.autocast)
    if schedule.to_config() != teacher.schedule.to_config():
        raise ValueError(f"the student's schedule {schedule.to_config()} must be the teacher's "
                         f"{teacher.schedule.to_config()}")
    consistency = LatentConsistency(base=teacher.prediction_type, sigma_min=schedule.sigma_min)
    embedded = bool(config.model.get("guidance_embedding", False))
    return OBJECTIVES["consistency"](schedule, teacher.model, teacher.prediction_type, consistency, conditioner,
                                     guidance_min=config.guidance_min if embedded else config.teacher_guidance,
                                     guidance_max=config.teacher_guidance, embed_guidance=embedded,
                                     skip=config.skip_steps, solver=config.teacher_solver, distance=config.distance,
                                     seed=config.seed, channels_last=channels_last, autocast=accelerator.autocast)


def reflow_couplings(config: TrainConfig, teacher: Teacher, conditioner, data, out: Path, accelerator, log,
                     vae=None):
    """Make (or finish) OUT/couplings and return the training stream over them. With a latent teacher
    (``vae``: its VAE) the pairs are latents: the noise takes the latent's shape, and the teacher's
    samples stay undecoded, so the student learns the teacher's map in its latent space."""
    from difflab.train.batches import CoupledData
    from difflab.train.couplings import Couplings
    recipe = {"teacher": str(config.teacher), "guidance": config.teacher_guidance, "steps": config.teacher_steps,
              "seed": config.seed, "dataset": config.dataset}
    couplings = Couplings(out / "couplings", config.couplings, recipe)
    solve = teacher.solver(conditioner, config.teacher_guidance, config.teacher_steps, accelerator.device)
    from difflab.codecs import VAECodec
    shape = None if vae is None else VAECodec(vae).model_shape(1, config.resolution, config.resolution)[1:]
    couplings.generate(solve, data, accelerator.process_index, accelerator.num_processes, log=log, shape=shape)
    accelerator.wait_for_everyone()
    couplings.load()
    return CoupledData(couplings, config.seed)
