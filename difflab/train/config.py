"""Training configuration: one frozen dataclass, presets, TOML files and command-line overrides.

Every field is a ``difflab train`` flag (``--batch-size 64``); ``--config FILE.toml`` reads a flat
TOML table with the same names (``batch_size = 64``); flags given on the command line win.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

from difflab.data import DATASETS, load_dataset
from difflab.data.controls import CONTROL_KINDS
from difflab.parameterization import PARAMETERIZATIONS
from difflab.settings import TIMESTEP_SAMPLINGS, WEIGHTINGS
from difflab.train.lineage import package_fields, read_header

LR_SCHEDULES = ("constant", "cosine")
DISTILL_METHODS = ("lcm", "cd", "reflow")
LORA_LAYERS = ("all", "attention", "cross")  # difflab.adapters.lora_train.TARGETS (torch-free here)
TEACHER_SOLVERS = ("ddim", "heun")
DISTANCES = ("l2", "huber", "l1")
TASKS = ("denoise", "vae")
DENOISER_MODEL = dict(channels=(64, 128, 128), layers_per_block=2, attention_levels=(1, 2), head_dim=32)
VAE_MODEL = dict(class_name="AutoencoderKL", channels=(64, 128, 128), layers_per_block=1, latent_channels=4)
MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")
SCHEDULE_KINDS = ("linear", "scaled_linear", "cosine", "flow")


@dataclass(frozen=True)
class TrainConfig:
    """A training run. ``model`` holds the network's architecture fields (``class_name``: UNet, the
    default, DiT, MMDiT or, for ``task="vae"``, AutoencoderKL; see ``difflab.models``)."""

    task: str = "denoise"                 # denoise: a diffusion model; vae: the autoencoder of latent diffusion
    dataset: str = "shapes"               # what to train on (folder: an image folder, set data_dir)
    data_dir: str | None = None           # the image folder of dataset=folder (captions: metadata.jsonl or .txt)
    data: dict = field(default_factory=dict)  # dataset=shapes options, [data] in --config: forms, relations, captions, and_order (a curriculum)
    resolution: int = 32                  # training image side in pixels (a multiple of 4)
    model: dict = field(default_factory=lambda: dict(DENOISER_MODEL))  # network: [model] in --config
    vae: str | None = None                # denoise: a VAE package (or a package with vae/): train in its latent space
    kl_weight: float = 1e-6               # vae: weight of the KL term (per latent element) against L1 (per pixel)
    perceptual_weight: float = 0.0        # vae, reflow: weight of a feature distance in the shapes-objects encoder (0: off)
    decoder_only: bool = False            # vae: train the decoder alone (the latents, and denoisers trained on them, stay valid)
    text_encoder: str = "minilm"          # shapes / folder: "minilm" or a local CLIP/T5 folder
    prediction_type: str = "v_prediction"  # what the network predicts (the parameterization)
    schedule: str = "cosine"              # the noise schedule (forward process)
    rescale_zero_terminal_snr: bool = True  # VP schedules end at pure noise (Lin et al., 2024)
    flow_shift: float = 1.0               # schedule=flow: SD3's timestep shift
    loss_weighting: str = "min_snr"       # how timesteps are weighted in the loss
    snr_gamma: float = 5.0                # min-SNR-gamma's gamma
    timestep_sampling: str = "uniform"    # how training timesteps are drawn (terminal: reflow's one-step distillation)
    logit_mean: float = 0.0               # logit_normal's m (SD3 eq. 19): > 0 draws noisier timesteps
    cond_dropout: float = 0.1             # fraction of samples trained with the empty prompt / null class
    batch_size: int = 64                  # global batch per optimiser step (all processes, all micro-batches)
    grad_accum: int = 1                   # gradient-accumulation micro-batches per step
    lr: float = 2e-4                      # AdamW learning rate after warm-up
    lr_warmup: int = 200                  # linear warm-up steps
    lr_schedule: str = "cosine"           # the learning rate after warm-up
    weight_decay: float = 0.0             # AdamW weight decay
    grad_clip: float = 1.0                # gradient-norm clipping; 0 turns it off
    ema_decay: float = 0.999              # EMA decay of the exported weights
    ema_warmup: bool = True               # ramp the EMA decay up over the first steps
    mixed_precision: str = "auto"         # auto = bf16 on a GPU that has it, fp32 on CPU
    max_steps: int = 1000                 # optimiser steps of the whole run
    max_minutes: float = 0.0              # stop (checkpoint, export) after this many wall-clock minutes of this invocation; 0: no limit
    checkpoint_every: int = 250           # steps between checkpoints; 0: only at the end
    keep_checkpoints: int = 2             # newest checkpoints kept
    sample_every: int = 0                 # steps between sample grids; 0: only at the end
    log_every: int = 10                   # steps between rows of OUT/log.csv
    max_bad_steps: int = 5                # consecutive non-finite losses that stop the run
    seed: int = 0                         # initial weights, data order, noise, timesteps, dropout
    num_workers: int = 0                  # data-loading worker processes
    threads: int = 0                      # torch CPU threads; 0 keeps torch's default
    init_from: str | None = None          # a model package (or bundled model name) whose weights start the run (fine-tune / grow)
    lora_rank: int = 0                    # with init_from: train only a LoRA of this rank (peft), the rest frozen; 0: every weight
    lora_alpha: float = 0.0               # the LoRA's alpha (its update is scaled by alpha / rank); 0: the rank
    lora_layers: str = "all"              # what the LoRA adapts: all (attention and convolutions) | attention | cross
    controlnet: str = ""                  # with init_from: train a ControlNet on each image's layout map or edges, the model frozen
    train_only: str = ""                  # train only the weights whose names start with this (e.g. temporal: a video UNet's motion blocks); "": all
    ip_adapter: bool = False              # with init_from: train an IP-Adapter on reference renders of each shapes item, the model frozen
    ip_tokens: str = "pooled"             # ip_adapter: what it reads, the encoder's pooled feature (4 tokens) | grid (one token per cell) | objects (a null slot and one per object, in reading order)
    ip_same_image: float = 0.0            # ip_adapter: the fraction of samples whose image prompt is the training image itself (the paper's pairs), not another render
    ip_teacher: bool = False              # ip_adapter: the target is the frozen model's own prediction for the scene in words (its pinned prompt), not the image's noise
    ip_query: str = "shared"              # ip_adapter: the image branch's query projection, shared (the layer's, as in the paper) | own (its own W'_q, trained)
    side_from: str | None = None          # with controlnet / ip_adapter: a package of that network (difflab's export) to go on training, instead of a fresh one
    distill: str = ""                     # set by difflab distill: lcm | cd | reflow ("": plain training)
    teacher: str | None = None            # distill: the teacher package (or a bundled model's name)
    teacher_guidance: float = 3.0         # distill: the teacher's CFG scale (lcm with a guidance embedding: the top of w's range)
    guidance_min: float = 1.0             # lcm with a guidance embedding: the bottom of w's range
    skip_steps: int = 20                  # lcm / cd: training timesteps one teacher step spans (LCM's skipping step k)
    teacher_solver: str = "ddim"          # lcm / cd: the teacher's ODE step, ddim | heun
    distance: str = "huber"               # lcm / cd: l2 | huber (iCT's pseudo-Huber); reflow: l2 | l1 (per-pixel median)
    couplings: int = 4096                 # reflow: (noise, teacher sample) pairs made before training
    teacher_steps: int = 20               # reflow: the teacher's ODE steps (DEIS) per coupling

    def __post_init__(self):
        _check(self.task in TASKS, "task", self.task, f"one of {TASKS}")
        if self.task == "vae" and self.model == DENOISER_MODEL:  # the denoiser's default table: the VAE's instead
            object.__setattr__(self, "model", dict(VAE_MODEL))
        _check(self.task == "denoise" or isinstance(self.model, dict) and self.model.get("class_name") == "AutoencoderKL",
               "model.class_name", isinstance(self.model, dict) and self.model.get("class_name"),
               "AutoencoderKL for task=vae")
        _check(self.task == "denoise" or self.vae is None, "vae", self.vae, "None for task=vae (it trains one)")
        _check(not self.decoder_only or self.task == "vae" and self.init_from, "decoder_only", self.decoder_only,
               "used with task=vae and init_from (a trained VAE whose encoder stays fixed)")
        _check(self.vae is None or (isinstance(self.vae, str) and self.vae), "vae", self.vae,
               "a VAE package folder or None")
        _check(isinstance(self.kl_weight, (int, float)) and math.isfinite(self.kl_weight) and self.kl_weight >= 0,
               "kl_weight", self.kl_weight, "a non-negative number")
        _check(isinstance(self.perceptual_weight, (int, float)) and math.isfinite(self.perceptual_weight)
               and self.perceptual_weight >= 0
               and (self.perceptual_weight == 0 or self.task == "vae" or self.distill == "reflow"),
               "perceptual_weight", self.perceptual_weight,
               "a non-negative number (non-zero only with task=vae or distill=reflow)")
        _check(isinstance(self.train_only, str) and (not self.train_only or self.task == "denoise" and not (
               self.lora_rank or self.controlnet or self.ip_adapter or self.distill)), "train_only", self.train_only,
               "a parameter-name prefix of a plain denoiser run (LoRA, ControlNet, IP-Adapter and distillation "
               "choose their own weights)")
        _check(not self.train_only or self.init_from, "train_only", self.train_only,
               "used with init_from (frozen fresh weights learn nothing: a new network's output layer is zero)")
        _check(self.dataset in DATASETS, "dataset", self.dataset, f"one of {tuple(DATASETS)}")
        _check(self.dataset != "folder" or self.data_dir, "data_dir", self.data_dir, "a folder for dataset=folder")
        _check_data(self.dataset, self.data)
        _check(_int(self.resolution, 8) and self.resolution % 4 == 0, "resolution", self.resolution,
               "an integer >= 8 divisible by 4")
        _check(isinstance(self.model, dict), "model", self.model, "a table of network fields (class_name: UNet or DiT)")
        _check(self.prediction_type in PARAMETERIZATIONS, "prediction_type", self.prediction_type,
               f"one of {', '.join(PARAMETERIZATIONS)}")
        _check(self.schedule in SCHEDULE_KINDS, "schedule", self.schedule, f"one of {SCHEDULE_KINDS}")
        _check(PARAMETERIZATIONS[self.prediction_type].handles_pure_noise
               or not (self.rescale_zero_terminal_snr or self.schedule == "flow"), "prediction_type", self.prediction_type,
               "v_prediction, sample or flow with a pure-noise endpoint (it cannot be trained where alpha = 0)")
        _check(self.loss_weighting in WEIGHTINGS, "loss_weighting", self.loss_weighting, f"one of {WEIGHTINGS}")
        _check(self.timestep_sampling in TIMESTEP_SAMPLINGS, "timestep_sampling", self.timestep_sampling,
               f"one of {TIMESTEP_SAMPLINGS}")
        _check(isinstance(self.logit_mean, (int, float)) and abs(self.logit_mean) <= 4, "logit_mean", self.logit_mean,
               "a number in [-4, 4] (SD3's m; beyond it almost every timestep sits at one end)")
        _check(self.timestep_sampling != "terminal" or self.distill == "reflow", "timestep_sampling", "terminal",
               "uniform or logit_normal: terminal (every sample at pure noise) is reflow's one-step distillation")
        _check(self.logit_mean == 0 or self.timestep_sampling == "logit_normal", "logit_mean", self.logit_mean,
               "0 unless timestep_sampling is logit_normal")
        _check(self.lr_schedule in LR_SCHEDULES, "lr_schedule", self.lr_schedule, f"one of {LR_SCHEDULES}")
        _check(self.mixed_precision in MIXED_PRECISIONS, "mixed_precision", self.mixed_precision,
               f"one of {MIXED_PRECISIONS}")
        _check(0 <= self.cond_dropout < 1, "cond_dropout", self.cond_dropout, "a fraction in [0, 1)")
        _check(0 <= self.ema_decay < 1, "ema_decay", self.ema_decay, "a number in [0, 1)")
        for name in ("batch_size", "grad_accum", "max_steps", "log_every", "max_bad_steps", "keep_checkpoints"):
            _check(_int(getattr(self, name), 1), name, getattr(self, name), "a positive integer")
        for name in ("checkpoint_every", "sample_every", "lr_warmup", "seed", "num_workers", "threads"):
            _check(_int(getattr(self, name), 0), name, getattr(self, name), "a non-negative integer")
        _check(isinstance(self.max_minutes, (int, float)) and math.isfinite(self.max_minutes) and self.max_minutes >= 0,
               "max_minutes", self.max_minutes, "a non-negative number of minutes")
        for name in ("lr", "snr_gamma", "flow_shift"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, name, value,
                   "a positive number")
        _check(self.init_from is None or (isinstance(self.init_from, str) and self.init_from), "init_from",
               self.init_from, "a model package folder or None")
        _check(_int(self.lora_rank, 0) and self.lora_rank <= 256 and (not self.lora_rank or self.init_from
                                                                       and self.task == "denoise"),
               "lora_rank", self.lora_rank, "an integer in [0, 256], above 0 only with init_from (a LoRA adapts a "
               "trained denoiser)")
        _check(isinstance(self.lora_alpha, (int, float)) and math.isfinite(self.lora_alpha) and self.lora_alpha >= 0,
               "lora_alpha", self.lora_alpha, "a number >= 0")
        _check(self.lora_layers in LORA_LAYERS, "lora_layers", self.lora_layers, f"one of {LORA_LAYERS}")
        _check(self.controlnet in ("", *CONTROL_KINDS), "controlnet", self.controlnet, f"'' or one of {CONTROL_KINDS}")
        _check(not self.controlnet or (self.init_from and not self.lora_rank and not self.distill and not self.vae
                                       and self.task == "denoise"), "controlnet", self.controlnet,
               "used with init_from (the pixel-space model it steers), without lora_rank, distill or vae")
        _check(not self.ip_adapter or (self.init_from and self.dataset == "shapes" and not self.controlnet
                                       and not self.lora_rank and not self.distill and not self.vae), "ip_adapter",
               self.ip_adapter, "used with init_from and dataset=shapes, without controlnet, lora_rank, distill or vae")
        _check(self.ip_tokens in ("pooled", "grid", "objects") and (self.ip_adapter or self.ip_tokens == "pooled"),
               "ip_tokens", self.ip_tokens, "pooled, grid or objects (grid and objects with ip_adapter)")
        _check(isinstance(self.ip_same_image, (int, float)) and not isinstance(self.ip_same_image, bool)
               and 0 <= self.ip_same_image <= 1 and (self.ip_adapter or self.ip_same_image == 0), "ip_same_image",
               self.ip_same_image, "a fraction in [0, 1] (non-zero with ip_adapter)")
        _check(isinstance(self.ip_teacher, bool) and (self.ip_adapter or not self.ip_teacher), "ip_teacher",
               self.ip_teacher, "true or false (true with ip_adapter)")
        _check(self.ip_query in ("shared", "own") and (self.ip_adapter or self.ip_query == "shared"), "ip_query",
               self.ip_query, "shared or own (own with ip_adapter)")
        _check(self.side_from is None or (isinstance(self.side_from, str) and self.side_from
                                          and (self.controlnet or self.ip_adapter)), "side_from", self.side_from,
               "None, or a ControlNet / IP-Adapter package folder used with controlnet or ip_adapter")
        _check(self.controlnet != "layout" or self.dataset == "shapes", "controlnet", self.controlnet,
               "layout with dataset=shapes (each image's scene); other datasets take edges")
        _check(self.distill in ("", *DISTILL_METHODS), "distill", self.distill, f"'' or one of {DISTILL_METHODS}")
        _check(not self.distill or self.teacher and self.task == "denoise", "teacher", self.teacher,
               "a model package (or bundled model's name) for distill")
        _check(not self.distill or self.prediction_type == ("flow" if self.distill == "reflow" else "lcm"),
               "prediction_type", self.prediction_type, "lcm for distill=lcm|cd, flow for distill=reflow")
        _check(isinstance(self.teacher_guidance, (int, float)) and 0 <= self.guidance_min <= self.teacher_guidance <= 30,
               "guidance_min/teacher_guidance", (self.guidance_min, self.teacher_guidance),
               "numbers with 0 <= guidance_min <= teacher_guidance <= 30")
        _check(_int(self.skip_steps, 1) and self.skip_steps < 1000, "skip_steps", self.skip_steps,
               "an integer in [1, 999]")
        _check(self.teacher_solver in TEACHER_SOLVERS, "teacher_solver", self.teacher_solver, f"one of {TEACHER_SOLVERS}")
        _check(self.distance in DISTANCES, "distance", self.distance, f"one of {DISTANCES}")
        _check(self.distance in (("l2", "l1") if self.distill == "reflow" else ("l2", "huber")), "distance",
               self.distance, "l2 or l1 for distill=reflow, l2 or huber for the consistency methods")
        _check(_int(self.couplings, 1) and self.couplings <= 1_000_000, "couplings", self.couplings,
               "an integer in [1, 1000000]")
        _check(_int(self.teacher_steps, 1) and self.teacher_steps <= 1000, "teacher_steps", self.teacher_steps,
               "an integer in [1, 1000]")
        _check(self.grad_clip >= 0 and self.weight_decay >= 0, "grad_clip/weight_decay",
               (self.grad_clip, self.weight_decay), "non-negative numbers")

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def field_help() -> dict[str, str]:
    """Field name -> its comment in the source of :class:`TrainConfig` (the help of ``difflab train``)."""
    try:
        lines = inspect.getsource(TrainConfig).splitlines()
    except (OSError, TypeError):  # no source (a frozen build): names and defaults only
        return {}
    comments, name = {}, None
    for line in lines:
        if line.lstrip().startswith("def "):  # the fields end where the methods begin
            break
        if match := re.match(r"^    (\w+): ", line):
            name = match.group(1)
        if name and "  # " in line:
            comments[name] = line.split("  # ", 1)[1].strip()
    choices = {"task": TASKS, "dataset": DATASETS, "prediction_type": PARAMETERIZATIONS, "schedule": SCHEDULE_KINDS,
               "loss_weighting": WEIGHTINGS, "timestep_sampling": TIMESTEP_SAMPLINGS, "lr_schedule": LR_SCHEDULES,
               "mixed_precision": MIXED_PRECISIONS, "distill": DISTILL_METHODS, "teacher_solver": TEACHER_SOLVERS,
               "distance": DISTANCES}
    for name, allowed in choices.items():
        comments[name] = f"{comments.get(name, '')}: {' | '.join(allowed)}".lstrip(": ")
    return comments


def _check_data(dataset: str, data) -> None:
    """The ``[data]`` table: options of the shapes dataset only, each checked as the dataset will."""
    if data == {}:
        return
    from difflab.data.shapes import CURRICULUM_OPTIONS, check_curriculum

    _check(isinstance(data, dict) and dataset == "shapes", "data", data, "a table of shapes dataset options "
           "(dataset=shapes)")
    _check(set(data) <= set(CURRICULUM_OPTIONS), "data", data, f"a table with keys among {CURRICULUM_OPTIONS}")
    check_curriculum(**data)


def _int(value, minimum) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check(ok, name, value, allowed) -> None:
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


TABLES = ("model", "data")   # fields a TOML file sets as [tables], never flags
TINY_MODEL = dict(channels=(16, 32), layers_per_block=1, attention_levels=(1,), head_dim=16, norm_groups=8,
                  mid_attention=False)
PRESETS: dict[str, dict] = {
    # a few seconds: for tests and a first look
    "tiny": dict(resolution=16, model=TINY_MODEL, batch_size=8, max_steps=20, checkpoint_every=10, lr_warmup=2,
                 ema_decay=0.9, log_every=5),
    # about 10 CPU minutes: colours and shapes already visible
    "shapes-quick": dict(model=dict(channels=(32, 64, 64), layers_per_block=1, attention_levels=(1, 2),
                                    head_dim=32), batch_size=32, max_steps=1500, checkpoint_every=500,
                         lr=5e-4, lr_warmup=100),
    # the bundled model's recipe (constant LR + EMA, so a run can stop at any checkpoint)
    "shapes": dict(model=dict(channels=(32, 64, 128), layers_per_block=1, attention_levels=(1, 2), head_dim=32,
                              attention_positions=True),
                   loss_weighting="min_snr_plus_one", batch_size=32, max_steps=20000, checkpoint_every=250, lr=5e-4,
                   lr_warmup=200, lr_schedule="constant", ema_decay=0.999, sample_every=1000),
    # the first stage of latent diffusion on shapes at 64x64: 4 x 16 x 16 latents
    "vae-shapes": dict(task="vae", resolution=64, model=dict(VAE_MODEL), batch_size=32, max_steps=20000,
                       checkpoint_every=500, lr=2e-4, lr_warmup=200, lr_schedule="cosine", ema_decay=0.999,
                       sample_every=2000),
    # the same latents (16 x 16 x 4) from a VAE light enough for a 2-core CPU (~10 images/s a thread)
    "vae-shapes-cpu": dict(task="vae", resolution=64, model=dict(VAE_MODEL, channels=(32, 64, 128)), batch_size=16,
                           max_steps=2000, checkpoint_every=250, lr=4e-4, lr_warmup=100, lr_schedule="cosine",
                           ema_decay=0.999, sample_every=1000),
    # a 2x decoder onto 64x64 for a 32x32 model: the latent is the image area-pooled to 32x32 (see models/vae.py)
    "vae-shapes-2x": dict(task="vae", resolution=64, model=dict(class_name="AutoencoderKL", channels=(32, 64),
                                                                 layers_per_block=1, latent_channels=3, encoder="area",
                                                                 posterior_std=0.02, mid_attention=False),
                          kl_weight=0.0, batch_size=16, max_steps=3000, checkpoint_every=250, lr=4e-4,
                          lr_warmup=100, lr_schedule="cosine", ema_decay=0.999, sample_every=1000),
    # moving shapes: the bundled image model grown into a video UNet (temporal blocks start as the
    # identity, so training begins from its pictures and has only motion to learn)
    "shapes-video": dict(dataset="moving-shapes", init_from="shapes-v1", prediction_type="v_prediction",
                         schedule="cosine", rescale_zero_terminal_snr=True, loss_weighting="min_snr_plus_one",
                         model=dict(class_name="VideoUNet", channels=(32, 64, 128), layers_per_block=1,
                                    attention_levels=(1, 2), head_dim=32, attention_positions=True),
                         batch_size=8, max_steps=4000, checkpoint_every=100, lr=3e-4, lr_warmup=50,
                         lr_schedule="constant", ema_decay=0.995, sample_every=500),
    # procedural sounds as 1 x 64 x 64 log-mel spectrograms, an image UNet from scratch
    "sounds": dict(dataset="sounds", resolution=64, prediction_type="v_prediction", schedule="cosine",
                   rescale_zero_terminal_snr=True, loss_weighting="min_snr_plus_one",
                   model=dict(channels=(32, 64, 96, 128), layers_per_block=1, attention_levels=(2, 3), head_dim=32,
                              attention_positions=True),       # attention at 16x16 and 8x8: 2x faster than at 32x32
                   batch_size=16, max_steps=6000, checkpoint_every=100, lr=5e-4, lr_warmup=100,
                   lr_schedule="constant", ema_decay=0.995, sample_every=500),
    "digits": dict(dataset="digits", resolution=16, model=dict(channels=(32, 64, 64), layers_per_block=1,
                                                               attention_levels=(2,), head_dim=32),
                   batch_size=64, max_steps=3000, checkpoint_every=1000, lr=5e-4, lr_warmup=100),
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return TrainConfig(**PRESETS[name])


def load_toml(path: str | Path) -> dict:
    """A flat TOML table of TrainConfig fields (``[model]`` and ``[data]`` as sub-tables)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"config file {path} is not valid TOML: {error}") from None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in {path}; allowed: {sorted(known)}")
    for table in TABLES:
        if table in values:
            _check(isinstance(values[table], dict), table, values[table], f"a [{table}] table")
            values[table] = {k: tuple(v) if isinstance(v, list) else v for k, v in values[table].items()}
    return values


# Fields that take a path or None: "" in a TOML file or a flag means None (derived, so a new one is covered).
OPTIONAL_PATHS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.type == "str | None")


def build_config(preset_name: str | None, toml_path: str | None, overrides: dict) -> TrainConfig:
    """Preset, then TOML file, then explicit overrides (flags): later ones win. A LoRA run (``lora_rank``
    with ``init_from``) takes the package's network, schedule, prediction type and resolution over the
    preset's, so ``--dataset folder`` adapts the bundled model as it is. An empty string given for a
    path field that may be None (``--init-from ""``, ``vae = ""``) unsets it: ``--preset shapes-video
    --init-from ""`` trains that network from scratch."""
    if preset_name and preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; choose one of {', '.join(PRESETS)}")
    values = dict(PRESETS[preset_name]) if preset_name else {}
    explicit = load_toml(toml_path) if toml_path else {}
    explicit.update({k: v for k, v in overrides.items() if v is not None})
    if (explicit.get("lora_rank") or explicit.get("controlnet") or explicit.get("ip_adapter")) and explicit.get("init_from"):  # the package's network as it is
        values.update(package_fields(*read_header(explicit["init_from"])))
    values.update(explicit)
    values.update({name: None for name in OPTIONAL_PATHS if explicit.get(name) == ""})
    return TrainConfig(**values)


def build_dataset(config: TrainConfig):
    """The training split of ``config.dataset`` (an image folder: ``config.data_dir``); needs no torch."""
    return load_dataset(config.dataset, "train", config.resolution, data_dir=config.data_dir, **config.data)
