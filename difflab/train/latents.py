"""Latent diffusion's two stages in the trainer (Rombach et al. 2022, Sec. 3).

Stage one trains an :class:`~difflab.models.vae.AutoencoderKL` (``task="vae"``); its export measures
the latents of the training data and stores ``shift_factor`` and ``scaling_factor`` in the VAE's
config, so that ``(z - shift) * scale`` has zero mean and unit variance, the role Stable Diffusion's
0.18215 plays (Rombach et al. 2022, appendix G: "rescale the latents by the component-wise
standard deviation"). Stage two (``vae=PATH``) trains the denoiser on those normalised latents; the
frozen VAE encodes each dataset item once, by its posterior mean, and the latent is cached by item.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import torch

VAE_FOLDER = "vae"


def load_vae(path) -> "torch.nn.Module":
    """The frozen AutoencoderKL of ``path``: a VAE package, or a model package holding one in ``vae/``."""
    from difflab.models.vae import AutoencoderKL
    from difflab.train.lineage import init_folder
    folder = init_folder(str(Path(path).expanduser()))                     # a bundled model's name too
    if (folder / VAE_FOLDER).is_dir() and not _holds_vae(folder):
        folder = folder / VAE_FOLDER
    if not folder.is_dir():
        raise ValueError(f"vae: no VAE package at {path} (a folder written by difflab train --task vae)")
    try:
        vae = AutoencoderKL.from_pretrained(folder)
    except FileNotFoundError as error:
        raise ValueError(f"vae: {error}") from None
    return vae.eval().requires_grad_(False)


def _holds_vae(folder: Path) -> bool:
    import json
    try:
        return json.loads((folder / "config.json").read_text()).get("class_name") == "AutoencoderKL"
    except (OSError, ValueError, AttributeError):
        return False


def latent_resolution(folder: Path) -> int | None:
    """A model package's data resolution when it keeps a VAE in ``vae/`` (a latent model), else None."""
    import json
    try:
        header = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    codec = header.get("codec") if isinstance(header, dict) else None
    if not (isinstance(codec, dict) and codec.get("type") == "vae"):
        return None
    return (header.get("data") or {}).get("resolution")


def latent_is_image(vae) -> bool:
    """Whether ``vae``'s latent is the image itself at a lower resolution (a cascade's first stage:
    fixed area pooling, unscaled, unshifted), so that image-space losses apply to it."""
    cfg = vae.config
    return cfg.encoder == "area" and cfg.scaling_factor == 1 and cfg.shift_factor == 0


def check_vae_fits(vae, channels: int, resolution: int) -> None:
    """Refuse a VAE that cannot encode the training images (channels, or a side it cannot divide)."""
    if vae.config.in_channels != channels:
        raise ValueError(f"vae: the VAE encodes {vae.config.in_channels}-channel images, the dataset has {channels}")
    if resolution % vae.config.downscale:
        raise ValueError(f"vae: resolution {resolution} is not a multiple of the VAE's downscale {vae.config.downscale}")


class LatentCache:
    """Normalised latents of dataset items: ``vae.normalize(vae.encode(x).mode())``, computed once per item."""

    def __init__(self, vae, data):
        self.vae, self.data, self._latents = vae, data, {}

    @torch.no_grad()
    def batch(self, positions: list[int], device) -> tuple[torch.Tensor, list]:
        indices = [self.data.item_index(p) for p in positions]
        missing = {i: p for i, p in zip(indices, positions) if i not in self._latents}  # item -> a position of it
        if missing:
            images, _ = self.data.batch(list(missing.values()))
            parameter = next(self.vae.parameters())
            z = self.vae.normalize(self.vae.encode(images.to(parameter.device, parameter.dtype)).mode()).float()
            self._latents.update(zip(missing, z.clone()))
        conditions = [self.data.item(p)[1] for p in positions]
        return torch.stack([self._latents[i] for i in indices]).to(device), conditions


@torch.no_grad()
def latent_statistics(vae, images: torch.Tensor, batch: int = 64) -> tuple[float, float]:
    """(mean, std) over every element of the raw latents (posterior means) of ``images``."""
    parameter = next(vae.parameters())
    z = torch.cat([vae.encode(part.to(parameter.device, parameter.dtype)).mode().double().cpu()
                   for part in images.split(batch)])
    return float(z.mean()), float(z.std())


def with_normalisation(vae, shift: float, std: float):
    """A copy of ``vae`` whose config normalises latents by ``shift`` and ``1 / std``."""
    if not (std > 0 and torch.isfinite(torch.tensor(std))):
        raise ValueError(f"the latents' standard deviation is {std}; the VAE did not train")
    config = dataclasses.replace(vae.config, shift_factor=round(shift, 6), scaling_factor=round(1.0 / std, 6))
    copy = type(vae)(config=config)
    copy.load_state_dict(vae.state_dict())
    return copy.eval()


def save_with_vae(model, vae, folder: Path, metadata: dict) -> Path:
    """Write a latent denoiser's package with its VAE in ``vae/``: staged beside ``folder`` and
    moved into place, so ``folder`` is always either the old package or the whole new one."""
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.staging-", dir=folder.parent))
    try:
        model.save_pretrained(staging / "package", metadata=metadata)
        vae.float().save_pretrained(staging / "package" / VAE_FOLDER)
        if folder.exists():
            os.replace(folder, staging / "old")
        os.replace(staging / "package", folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


@torch.no_grad()
def reconstruction_grid(vae, images: torch.Tensor):
    """A PIL grid: ``images`` [N, C, H, W] in [-1, 1] above their reconstructions (posterior means)."""
    from difflab.data import to_images
    from difflab.pipelines.recipes import Result
    parameter = next(vae.parameters())
    x = images.to(parameter.device, parameter.dtype)
    rows = to_images(torch.cat([x, vae.decode(vae.encode(x).mode()).clamp(-1, 1)]).float().cpu())
    return Result(rows, []).grid(columns=len(images))

