"""Pipelines as model packages: the sections a pipeline reads from a package's ``config.json``
(checked before the network is built), its codec (pixels, or a VAE kept in ``vae/``), and
:func:`save_pipeline`, which writes a pipeline so that ``Pipeline.from_pretrained`` reads it back.

A latent package says so in ``config.json``: ``"codec": {"type": "vae", "path": "vae"}``, the VAE
being an :class:`~difflab.models.vae.AutoencoderKL` package inside the folder.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from difflab import limits
from difflab.codecs import AudioCodec, PixelCodec, VAECodec, VideoCodec
from difflab.denoisers import validate_prediction_type
from difflab.parameterization import get_parameterization
from difflab.outputs import fsync_folder
from difflab.sampling import DEFAULT_SAMPLER, validate_settings
from difflab.schedules import NoiseSchedule

DEFAULTS = {"steps": 20, "sampler": DEFAULT_SAMPLER, "guidance_scale": 3.0, "spacing": None}
VAE_FOLDER = "vae"


def sampling_defaults(section, folder) -> dict:
    """The package's recommended settings (its ``sampling`` section) over difflab's ``DEFAULTS``.

    A model's best sampler and guidance are measured on the model, so they travel with it, as a
    scheduler config does in diffusers. Unknown keys and bad values are refused at load time.
    """
    where = f"{folder}/config.json 'sampling'"
    if not isinstance(section, dict) or set(section) - set(DEFAULTS):
        raise ValueError(f"{where} must be a table with keys among {', '.join(DEFAULTS)}, got {section!r}")
    values = {**DEFAULTS, **section}
    try:
        validate_settings(values["sampler"], values["steps"], values["spacing"], values["guidance_scale"])
    except ValueError as error:
        raise type(error)(f"{where}: {error}") from None
    return values


PIPELINE_KEYS = {"diffusion": ("schedule", "prediction_type"), "conditioning": ("encoder",),
                 "data": ("resolution", "channels")}


def check_pipeline_sections(header: dict, folder: Path) -> tuple[NoiseSchedule, PixelCodec]:
    """The sections a pipeline needs, checked (with the limits) before the network is built;
    returns the noise schedule and the codec."""
    where = folder / "config.json"
    for section, keys in PIPELINE_KEYS.items():
        if section not in header:
            raise ValueError(f"{folder} lacks the '{section}' section a pipeline needs; was it made by difflab train?")
        if not isinstance(header[section], dict):
            raise ValueError(f"{where}: the '{section}' section must be a JSON object, got {header[section]!r}"[:300])
        missing = [key for key in keys if key not in header[section]]
        if missing:
            raise ValueError(f"{where}: the '{section}' section has no {' or '.join(map(repr, missing))}, "
                             f"which a pipeline needs")
    try:
        validate_prediction_type(header["diffusion"]["prediction_type"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: diffusion.prediction_type: {error}") from None
    resolution = header["data"]["resolution"]
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"{where}: data.resolution must be a positive integer, got {resolution!r}")
    limits.check("pixels", resolution * resolution, f"{where}: data.resolution {resolution}: pixels per image "
                                                     f"({resolution}x{resolution})")
    schedule = header["diffusion"]["schedule"]
    if not isinstance(schedule, dict):
        raise ValueError(f"{where}: diffusion.schedule must be a JSON object, got {schedule!r}"[:300])
    timesteps = schedule.get("num_train_timesteps", 0)
    if isinstance(timesteps, int):
        limits.check("train_timesteps", timesteps, f"{where}: diffusion.schedule.num_train_timesteps")
    try:
        schedule = NoiseSchedule.from_config(schedule)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: diffusion.schedule: {error}") from None
    try:
        return schedule, PixelCodec(header["data"]["channels"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: data.channels: {error}") from None


def codec_from_header(header: dict, folder: Path, pixel_codec: PixelCodec):
    """The package's codec: its ``codec`` section's VAE (an AutoencoderKL package in the folder), or
    the pixel codec of its ``data`` section."""
    section = header.get("codec")
    if section is None:
        return pixel_codec
    where = folder / "config.json"
    if isinstance(section, dict) and section.get("type") in ("video", "audio"):
        try:
            return media_codec(section, pixel_codec.channels)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: codec: {error}"[:300]) from None
    if section != {"type": "vae", "path": VAE_FOLDER}:
        raise ValueError(f"{where}: codec must be {{'type': 'vae', 'path': '{VAE_FOLDER}'}}, {{'type': 'video', "
                         f"'frames': N}}, {{'type': 'audio'}} (or absent), got {section!r}"[:300])
    from difflab.models.vae import AutoencoderKL
    vae = AutoencoderKL.from_pretrained(folder / VAE_FOLDER).eval().requires_grad_(False)
    if vae.config.in_channels != pixel_codec.channels:
        raise ValueError(f"{where}: the VAE makes {vae.config.in_channels}-channel images but data.channels is "
                         f"{pixel_codec.channels}")
    return VAECodec(vae)


def media_codec(section: dict, channels: int):
    """The codec of a ``{"type": "video", "frames": N}`` or ``{"type": "audio"}`` section."""
    if section["type"] == "video":
        if set(section) != {"type", "frames"}:
            raise ValueError(f"a video codec section is {{'type': 'video', 'frames': N}}, got {section!r}")
        return VideoCodec(channels, section["frames"])
    if set(section) != {"type"} or channels != 1:
        raise ValueError(f"an audio codec section is {{'type': 'audio'}} with data.channels 1, got {section!r}")
    return AudioCodec()


def codec_section(codec) -> dict | None:
    """A codec as a package's ``codec`` section (None: pixels, the default)."""
    if isinstance(codec, VideoCodec):
        return {"type": "video", "frames": codec.frames}
    if isinstance(codec, AudioCodec):
        return {"type": "audio"}
    if isinstance(codec, VAECodec):
        return {"type": "vae", "path": VAE_FOLDER}
    return None


def save_pipeline(pipe, folder, training: dict | None = None) -> Path:
    """Write ``pipe`` as a package at ``folder`` (a new folder), atomically: everything is written
    beside it and renamed into place. The network and the VAE must be difflab's registered models.
    ``training``: a record of how the parts were made, kept as the package's ``training`` section."""
    from difflab.models.base import ModelMixin
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} exists; save_pretrained writes a new folder")
    for what, module in (("network", pipe.model), ("VAE", pipe.vae)):
        if module is not None and not isinstance(module, ModelMixin):
            raise ValueError(f"the pipeline's {what} is a {type(module).__name__}, not a registered difflab model: "
                             f"a pipeline loaded from a diffusers folder is saved by keeping that folder")
    metadata = {"diffusion": {"schedule": pipe.schedule.to_config(),
                              "prediction_type": get_parameterization(pipe.prediction_type).to_config()},
                "conditioning": {"encoder": pipe.encoder.spec, "null": pipe.conditioner.null},
                "data": {"dataset": pipe.dataset, "resolution": pipe.resolution, "channels": pipe.channels},
                "sampling": {key: pipe.defaults[key] for key in DEFAULTS}}
    if codec_section(pipe.codec) is not None:
        metadata["codec"] = codec_section(pipe.codec)
    if training is not None:
        metadata["training"] = training
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        _float32(pipe.model).save_pretrained(staging / "package", metadata=metadata)
        if pipe.vae is not None:
            _float32(pipe.vae).save_pretrained(staging / "package" / VAE_FOLDER)
        (staging / "package").rename(folder)
        fsync_folder(folder.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _float32(module):
    """Packages hold float32 weights; a half-precision pipeline is copied, not changed."""
    import copy
    import torch
    if next(module.parameters()).dtype == torch.float32:
        return module
    return copy.deepcopy(module).float()

