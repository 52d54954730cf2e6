"""The training loop on Hugging Face Accelerate.

One CPU process by default; ``torchrun --nproc_per_node N -m difflab train ...`` or ``accelerate
launch`` for several processes (DDP over gloo on CPU, NCCL on GPUs) with no code change. The global
batch ``batch_size`` is split over processes and gradient-accumulation micro-batches; every sample's
noise, timestep and dropout come from its global position (``objectives.draw_per_sample``), so the
result does not depend on that split, and a resumed run ends with exactly the weights of an
uninterrupted one (on CPU, same thread count).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import math
import time
from pathlib import Path

import torch

from difflab.outputs import append_text, check_output_folder
from difflab.pipelines.packaging import codec_section
from difflab.schedules import NoiseSchedule
from difflab.settings import BUNDLED_MODELS
from difflab.train import checkpoint as ckpt
from difflab.train.batches import TrainingData
from difflab.train.config import TrainConfig
from difflab.train.distill import student_sampling
from difflab.conditioning import Conditioner
from difflab.train.latents import (LatentCache, check_vae_fits, latent_is_image, latent_resolution, latent_statistics,
                                   load_vae, save_with_vae, with_normalisation)
from difflab.train.lineage import init_folder, training_record, warm_start
from difflab.train.objectives import OBJECTIVES, Batch
from difflab.train.optim import ema_decay_at, ema_update, lr_at, trained_weights
from difflab.train.previews import write_sample_grid


class TrainingStopped(RuntimeError):
    """Raised when too many consecutive steps had a non-finite loss; the last checkpoint is intact."""


def make_schedule(config: TrainConfig) -> NoiseSchedule:
    if config.schedule == "flow":
        return NoiseSchedule.flow(shift=config.flow_shift)
    return getattr(NoiseSchedule, config.schedule)(rescale_zero_terminal_snr=config.rescale_zero_terminal_snr)


def make_conditioner(config: TrainConfig, data: TrainingData) -> Conditioner:
    """The frozen encoder of captions (text) or of class labels, as the dataset says."""
    from difflab.models.text import ClassLabelEncoder, text_encoder_from_spec
    if data.class_conditional:
        names = getattr(data.dataset, "class_names", None) or [str(i) for i in range(data.num_classes)]
        return Conditioner(ClassLabelEncoder(list(names)))
    spec = {"type": "minilm", "max_length": 32} if config.text_encoder == "minilm" else config.text_encoder
    return Conditioner(text_encoder_from_spec(spec))


def make_model(config: TrainConfig, channels: int, conditioner: Conditioner):
    """The network named by ``config.model`` (``class_name``, default UNet) with its conditioning inputs."""
    from difflab.models import create_model
    model_args = dict(config.model)
    class_name = model_args.pop("class_name", "UNet")
    if conditioner.class_labels:
        model_args.update(num_classes=conditioner.encoder.null_label)
    else:
        model_args.update(context_dim=conditioner.dim, pooled_dim=conditioner.dim)
    return create_model(class_name, in_channels=channels, out_channels=channels, **model_args)


def make_autoencoder(config: TrainConfig, channels: int):
    """The AutoencoderKL of ``task="vae"`` from ``config.model`` (its ``class_name`` is AutoencoderKL)."""
    from difflab.models import create_model
    model_args = dict(config.model)
    model_args.pop("class_name")
    return create_model("AutoencoderKL", in_channels=channels, **model_args)


def make_objective(config: TrainConfig, schedule: NoiseSchedule, conditioner: Conditioner, accelerator,
                   channels_last: bool, teacher=None):
    if config.distill:
        from difflab.train.distill import make_distill_objective
        return make_distill_objective(config, teacher, schedule, conditioner, accelerator, channels_last)
    if config.task == "vae":
        return OBJECTIVES["reconstruction"](config.kl_weight, seed=config.seed, autocast=accelerator.autocast,
                                            perceptual_weight=config.perceptual_weight)
    return OBJECTIVES["denoising"](schedule, config.prediction_type, conditioner, weighting=config.loss_weighting,
                                   snr_gamma=config.snr_gamma, timestep_sampling=config.timestep_sampling,
                                   logit_mean=config.logit_mean, cond_dropout=config.cond_dropout, seed=config.seed, channels_last=channels_last,
                                   autocast=accelerator.autocast)


class Trainer:
    def __init__(self, config: TrainConfig, out: str | Path, resume: bool = False, log=print, dataset=None):
        """``dataset``: the training split already built (the command line builds it to check the
        data before importing torch); by default built from ``config``."""
        from accelerate import Accelerator

        self.config, self.out, self.log = config, Path(out), log
        check_output_folder(self.out)
        ckpt.check_run_folder(self.out, resume)
        init_from = init_folder(config.init_from)
        if init_from and not resume and not init_from.is_dir():
            raise ValueError(f"init_from: no model package at {config.init_from} (a folder written by difflab train, "
                             f"or a bundled model's name: {', '.join(BUNDLED_MODELS)})")
        if init_from and not resume and config.vae is None and latent_resolution(init_from) is not None:
            raise ValueError(f"init_from: {config.init_from} is a latent model (its VAE in vae/): train it in its "
                             f"latent space with --vae {config.init_from} --resolution {latent_resolution(init_from)}")
        if config.side_from and not init_folder(config.side_from).is_dir():
            raise ValueError(f"side_from: no ControlNet / IP-Adapter package at {config.side_from}")
        if config.threads:
            torch.set_num_threads(config.threads)
        cuda = torch.cuda.is_available()
        precision = config.mixed_precision
        if precision == "auto":
            precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
        if precision != "no" and not cuda:
            raise ValueError(f"mixed_precision={precision} needs a GPU; on CPU difflab trains in fp32")
        self.accelerator = Accelerator(mixed_precision=precision, cpu=not cuda)
        world = self.accelerator.num_processes
        if config.batch_size % (world * config.grad_accum):
            raise ValueError(f"batch_size {config.batch_size} must be divisible by processes ({world}) x "
                             f"grad_accum ({config.grad_accum})")
        self.schedule = make_schedule(config)
        self.data = TrainingData(config, dataset)
        self.vae = self.latents = self.conditioner = None
        if config.vae:  # latent diffusion: the network works on the VAE's normalised latents
            self.vae = load_vae(config.vae)
            check_vae_fits(self.vae, self.data.channels, config.resolution)
        latent = self.vae is not None and not latent_is_image(self.vae)
        if config.perceptual_weight and (self.data.channels != 3 or latent):
            raise ValueError(f"perceptual_weight needs RGB images (the shapes-objects encoder's input); the "
                             f"{config.dataset} dataset has {self.data.channels} channel(s)"
                             + (" and this run works on a VAE's (not a cascade's) latents" if latent else ""))
        if config.task == "vae":
            torch.manual_seed(config.seed)  # the initial weights depend on the seed alone
            model = make_autoencoder(config, self.data.channels)
        else:
            self.conditioner = make_conditioner(config, self.data)
            torch.manual_seed(config.seed)  # after the encoder's loading, which may draw numbers
            channels = self.vae.config.latent_channels if self.vae is not None else self.data.channels
            model = make_model(config, channels, self.conditioner)
            if (self.data.media == "video") != (getattr(model, "media", "image") == "video"):
                raise ValueError(f"the {config.dataset} dataset holds {self.data.media}; train it with "
                                 f"{'model.class_name = VideoUNet or VideoMMDiT' if self.data.media == 'video' else 'an image network'}")
        self.parent_training = None
        if config.init_from and not resume:
            line, self.parent_training = warm_start(model, init_from)
            self.log(line)
        elif config.init_from:  # resumed: the weights come from the checkpoint, the lineage from the package
            self.parent_training = training_record(init_from)
        self.controls = None
        if config.controlnet or config.ip_adapter:   # a side network on the frozen UNet; only it trains
            from difflab.train.control import side_network
            model, self.controls = side_network(model, config, self.data)
        if config.lora_rank:    # peft LoRA layers; only they train
            from difflab.adapters.lora_train import add_lora
            adapted = add_lora(model, config.lora_rank, config.lora_alpha or None, config.lora_layers)
            self.log(f"training a rank-{config.lora_rank} LoRA on {len(adapted)} modules ({config.lora_layers})")
        self.channels_last = not cuda
        self.teacher = self.coupled = None
        if config.distill:   # difflab distill: a frozen teacher (train/distill.py)
            from difflab.train.distill import Teacher
            self.teacher = Teacher(config, self.conditioner, self.accelerator.device)
        self.objective = make_objective(config, self.schedule, self.conditioner, self.accelerator, self.channels_last,
                                        self.teacher)
        if config.ip_teacher:   # the target: the frozen model's prediction for the scene in words
            from difflab.train.image_prompt import SceneTeacher
            self.objective.teacher = SceneTeacher(model.unet, self.conditioner, self.controls)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
        optimizer = torch.optim.AdamW(trained_weights(model, config), lr=config.lr, weight_decay=config.weight_decay,
                                      foreach=True)  # the per-parameter loop is slow on CPU
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.ema = {k: v.to(self.accelerator.device) for k, v in self.ema.items()}  # beside the weights
        if cuda and self.conditioner is not None and not self.conditioner.class_labels:
            encoder = self.conditioner.encoder  # on the GPU, in batches, every caption of the dataset kept
            encoder.to(self.accelerator.device)
            encoder.cache_size = max(encoder.cache_size, len(self.data) + 1)
            self.conditioner.batch_encode = True
        if self.vae is not None:
            self.vae.to(self.accelerator.device)
            self.latents = LatentCache(self.vae, self.data)
        if config.distill == "reflow":
            from difflab.train.distill import reflow_couplings
            self.coupled = reflow_couplings(config, self.teacher, self.conditioner, self.data, self.out,
                                            self.accelerator, self.log, vae=self.vae)
        self.step, self.samples_seen, self.bad_in_a_row, self.skipped = 0, 0, 0, 0
        if resume:
            self._resume()
        self._tensorboard = None  # opened at the first log row; False when TensorBoard is not installed

    # ----- state -------------------------------------------------------------------------------
    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def _resume(self):
        ckpt.clean_temporary(self.out)
        path, saved = ckpt.load_latest(self.out, log=self.log)
        state = saved["state"]
        defaults = json.loads(json.dumps(TrainConfig().to_dict()))   # a field added since: its default then
        if _math_fields({**defaults, **state["config"]}) != _math_fields(json.loads(json.dumps(self.config.to_dict()))):
            raise ValueError(f"the checkpoint in {path} was made with another configuration; resume with the same "
                             "flags or start a new --out")
        self.unwrapped.load_state_dict(saved["model"])
        self.ema = {k: v.float().to(self.accelerator.device) for k, v in saved["ema"].items()}
        self.optimizer.load_state_dict(saved["optimizer"])
        self.step, self.samples_seen = state["step"], state["samples_seen"]
        self.skipped = state["skipped"]
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        self.log(f"resumed from {path} (step {self.step})")

    def save_checkpoint(self):
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            state = {"step": self.step, "samples_seen": self.samples_seen, "skipped": self.skipped,
                     "torch_rng": torch.get_rng_state().tolist(), "config": self.config.to_dict()}
            ckpt.save_checkpoint(self.out, self.step, self.unwrapped.state_dict(), self.ema,
                                 self.optimizer.state_dict(), state, self.config.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    # ----- one optimiser step ------------------------------------------------------------------
    def micro_batches(self):
        """Global positions of this process's micro-batches for the current step."""
        config, acc = self.config, self.accelerator
        per_process = config.batch_size // acc.num_processes
        start = self.samples_seen + acc.process_index * per_process
        positions = list(range(start, start + per_process))
        size = per_process // config.grad_accum
        return [positions[i:i + size] for i in range(0, per_process, size)]

    def micro_loss(self, positions: list[int]) -> torch.Tensor:
        device = self.accelerator.device
        if hasattr(self.objective, "target_weights"):   # consistency distillation's target: the EMA weights
            self.objective.target_weights = self.ema
        if self.coupled is not None:                    # reflow: (noise, teacher sample) pairs
            x1, conditions, z = self.coupled.batch(positions)
            return self.objective.loss(self.model, Batch(x1.to(device), conditions, positions, noise=z))
        if self.latents is not None:
            x0, conditions = self.latents.batch(positions, device)
        else:
            images, conditions = self.data.batch(positions)
            x0 = images.to(device)
        if self.controls is not None:                   # this batch's control images / image-prompt features
            self.unwrapped.control = self.controls.batch(positions).to(device)
        return self.objective.loss(self.model, Batch(x0, conditions, positions))

    def train_step(self) -> float:
        config, acc = self.config, self.accelerator
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, config.lr, config.lr_warmup, config.lr_schedule, config.max_steps)
        batches = self.micro_batches()
        total = torch.zeros((), device=acc.device)
        for i, positions in enumerate(batches):
            sync = contextlib.nullcontext() if i == len(batches) - 1 else acc.no_sync(self.model)
            with sync:
                loss = self.micro_loss(positions)
                acc.backward(loss / len(batches))
            total += loss.detach() / len(batches)
        self.samples_seen += config.batch_size
        loss = acc.reduce(total, reduction="mean")
        if not torch.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_in_a_row += 1
            self.skipped += 1
            return float("nan")
        if config.grad_clip:
            acc.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        ema_update(self.ema, self.unwrapped, ema_decay_at(self.step, config.ema_decay, config.ema_warmup))
        self.step += 1
        self.bad_in_a_row = 0
        return float(loss)

    # ----- the run -----------------------------------------------------------------------------
    def fit(self):
        config, acc = self.config, self.accelerator
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            what = "a VAE" if config.task == "vae" else "a latent denoiser" if self.vae is not None else "a denoiser"
            self.log(f"training {what} on {config.dataset} on {acc.num_processes} process(es), device {acc.device}, "
                     f"precision {acc.mixed_precision}, global batch {config.batch_size}, "
                     f"{self.unwrapped.num_parameters / 1e6:.2f}M parameters, steps {self.step}->{config.max_steps}")
        bar = _progress(acc.is_main_process, config.max_steps, self.step)
        log_rows, started, start_step = [], time.perf_counter(), self.step
        while self.step < config.max_steps:
            loss = self.train_step()
            if self.bad_in_a_row >= config.max_bad_steps:
                raise TrainingStopped(f"{self.bad_in_a_row} consecutive non-finite losses at step {self.step}; "
                                      f"the last good checkpoint is in {ckpt.checkpoint_dir(self.out)}")
            if math.isnan(loss):
                continue
            rate = (self.step - start_step) * config.batch_size / (time.perf_counter() - started)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.1f}", skipped=self.skipped)
            out_of_time = bool(config.max_minutes) and self._out_of_time(started)
            if self.step % config.log_every == 0 or self.step == config.max_steps or out_of_time:
                log_rows.append({"step": self.step, "loss": loss, "images_per_s": rate, "skipped": self.skipped,
                                 "lr": self.optimizer.param_groups[0]["lr"]})
                self._write_log(log_rows)
                log_rows = []
            if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                self.save_checkpoint()
            if config.sample_every and self.step % config.sample_every == 0 and acc.is_main_process:
                try:
                    self.write_sample_grid()
                except Exception as error:  # a preview must never end a training run
                    self.log(f"could not write the sample grid at step {self.step}: {error!r}")
            if out_of_time:
                self.log(f"stopping at step {self.step}: max_minutes={config.max_minutes} reached")
                break
        bar.close()
        if self.step % max(config.checkpoint_every, 1) != 0 or not config.checkpoint_every:
            self.save_checkpoint()
        if acc.is_main_process:
            self.export()
        acc.wait_for_everyone()
        return self.out / "model"

    def _out_of_time(self, started: float) -> bool:
        """Whether ``max_minutes`` has passed; every process takes the same decision."""
        over = time.perf_counter() - started > 60 * self.config.max_minutes
        if self.accelerator.num_processes > 1:
            flag = torch.tensor(float(over), device=self.accelerator.device)
            over = bool(self.accelerator.reduce(flag, reduction="sum") > 0)
        return over

    def _write_log(self, rows):
        if not self.accelerator.is_main_process:
            return
        path = self.out / "log.csv"
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        if not path.exists():
            writer.writeheader()
        writer.writerows(rows)
        append_text(path, text.getvalue())  # never through a link planted at OUT/log.csv
        if self._tensorboard is None:
            self._tensorboard = tensorboard_writer(self.out / "tensorboard") or False
        if self._tensorboard:
            for row in rows:
                for name, value in row.items():
                    if name != "step":
                        self._tensorboard.add_scalar(f"train/{name}", value, row["step"])
            self._tensorboard.flush()

    def package_metadata(self) -> dict:
        config = self.config
        training = {**config.to_dict(), "steps_done": self.step, "skipped_steps": self.skipped,
                    **({"parent": self.parent_training} if self.parent_training else {})}
        data = {"dataset": config.dataset, "resolution": config.resolution, "channels": self.data.channels}
        if config.task == "vae":
            return {"data": data, "training": training}
        return {
            **({"codec": codec_section(self.codec())} if codec_section(self.codec()) else {}),
            "diffusion": {"schedule": self.schedule.to_config(), "prediction_type": self.prediction_type()},
            **({"sampling": student_sampling(config)} if config.distill else {}),
            **({"controlnet": {"kind": config.controlnet, "base": str(config.init_from)}} if config.controlnet else {}),
            **({"ip_adapter": {"base": str(config.init_from)}} if config.ip_adapter else {}),
            "conditioning": {"encoder": self.conditioner.spec, "null": self.conditioner.null},
            "data": data,
            "training": training,
        }

    def export(self) -> Path:
        """OUT/model: a model package whose weights are the EMA weights. A VAE's config gets the
        latent normalisation measured on the first 1024 training items; a latent denoiser's package
        holds its VAE in ``vae/``."""
        model, folder = self.ema_model(), self.out / "model"
        if self.config.lora_rank:  # OUT/lora/adapter.safetensors alone, and the package with it merged
            from difflab.adapters.lora_train import export_adapter
            model = export_adapter(model, self.out / "lora", {"base": str(self.config.init_from)})
        if self.controls is not None:  # the ControlNet or IP-Adapter alone is the package
            model = model.side
        if self.config.task == "vae":
            if model.config.encoder != "area":  # an area VAE's latent is the pooled image: its pixel scale is kept
                images, _ = self.data.batch(list(range(min(1024, len(self.data)))))
                model = with_normalisation(model, *latent_statistics(model.to(self.accelerator.device), images))
            return model.save_pretrained(folder, metadata=self.package_metadata())
        if self.vae is None:
            return model.save_pretrained(folder, metadata=self.package_metadata())
        return save_with_vae(model, self.vae, folder, self.package_metadata())

    def prediction_type(self):
        """What the network's output means: the config's name, or a student's consistency function."""
        consistency = getattr(self.objective, "consistency", None)
        return consistency.to_config() if consistency is not None else self.config.prediction_type

    def ema_model(self):
        """A copy of the network holding the EMA weights."""
        model = copy.deepcopy(self.unwrapped).float()
        model.load_state_dict(self.ema)
        return model.eval()

    def codec(self):
        """The codec of the data (pixels, a VAE's latents, video clips, spectrograms)."""
        from difflab.codecs import AudioCodec, PixelCodec, VAECodec, VideoCodec
        if self.vae is not None:
            return VAECodec(self.vae)
        if self.data.media == "video":
            return VideoCodec(self.data.channels, self.data.dataset.frames)
        return AudioCodec() if self.data.media == "audio" else PixelCodec(self.data.channels)

    def pipeline(self):
        """A :class:`~difflab.Pipeline` over the EMA weights, built through its public constructor."""
        from difflab.pipelines import DEFAULTS, Pipeline
        defaults = {**DEFAULTS, **(student_sampling(self.config) if self.config.distill else {})}
        model = self.ema_model().to(self.accelerator.device)
        pipe = Pipeline(model.unet if self.controls is not None else model, self.schedule, self.prediction_type(),
                        self.conditioner, self.codec(), self.config.resolution, name="training", defaults=defaults)
        if self.controls is not None:   # the ControlNet in training steers its frozen UNet
            pipe.controlnets.append(("training", model.controlnet, ""))
        return pipe

    def write_sample_grid(self):
        write_sample_grid(self)


def tensorboard_writer(folder: Path):
    """A TensorBoard ``SummaryWriter`` for ``folder`` when the ``tensorboard`` package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder))


OPERATIONAL_FIELDS = ("checkpoint_every", "keep_checkpoints", "sample_every", "log_every", "num_workers",
                      "max_bad_steps", "threads", "max_steps", "max_minutes")  # max_steps: extend or end a run early


def _math_fields(config: dict) -> dict:
    """The fields that change the weights: a resumed run may change only the others."""
    return {k: v for k, v in config.items() if k not in OPERATIONAL_FIELDS}


def _progress(show: bool, total: int, initial: int):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not show, unit="step", dynamic_ncols=True)


def train(config: TrainConfig, out: str | Path, resume: bool = False, log=print, dataset=None) -> Path:
    """Train and export ``OUT/model``; returns its path."""
    return Trainer(config, out, resume=resume, log=log, dataset=dataset).fit()
