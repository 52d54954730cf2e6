"""Codecs: data space <-> the space a diffusion model works in.

A pipeline and its edits only ever ask the codec: how big is the model-space tensor for an output
of W x H (``model_shape``), what side lengths are allowed (``size_multiple``), how an image enters
(``encode``) and leaves (``decode``) model space, and how an edit mask shrinks to model space
(``downsample_mask``). So the same pipeline code runs a pixel model, a latent model behind a VAE
(``VAECodec``, latent diffusion: Rombach et al. 2022, Sec. 3) or an audio model behind a
spectrogram codec.

Data tensors are images in [-1, 1], ``[B, C, H, W]``.
"""

from __future__ import annotations

import torch


class Codec:
    """The interface. ``channels``: data channels; ``latent_channels``: model-space channels;
    ``downsampling``: data pixels per model-space pixel along each side."""

    channels: int
    latent_channels: int
    downsampling: int = 1

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def size_multiple(self, network_multiple: int = 1) -> int:
        """Data-space sides must be multiples of this (the network's own multiple in model space)."""
        return self.downsampling * max(1, int(network_multiple))

    def model_shape(self, batch: int, width: int, height: int) -> tuple[int, int, int, int]:
        """Shape of the model-space tensor for ``batch`` outputs of ``width`` x ``height`` pixels."""
        if width % self.downsampling or height % self.downsampling:
            raise ValueError(f"image sides must be multiples of {self.downsampling}; got {width}x{height}")
        return (batch, self.latent_channels, height // self.downsampling, width // self.downsampling)

    def downsample_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """An edit mask [B, 1, H, W] in data space -> model space (1 = regenerate)."""
        if self.downsampling == 1:
            return mask
        # a model-space cell is regenerated when any of its pixels is: the kept region stays exact
        return torch.nn.functional.max_pool2d(mask, self.downsampling)


class PixelCodec(Codec):
    """Pixel-space diffusion: model space is data space, optionally scaled (``x * scale``)."""

    def __init__(self, channels: int = 3, scale: float = 1.0):
        if channels not in (1, 3):
            raise ValueError(f"a pixel codec takes 1 or 3 channels, got {channels!r}")
        if not (isinstance(scale, (int, float)) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.channels = self.latent_channels = channels
        self.scale = float(scale)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.scale == 1.0 else x * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.scale == 1.0 else z / self.scale

    def __repr__(self) -> str:
        return f"PixelCodec(channels={self.channels}, scale={self.scale})"


class VAECodec(Codec):
    """Latent diffusion (Rombach et al. 2022, Sec. 3): model space is a VAE's normalised latents,
    ``(z - shift_factor) * scaling_factor`` with the constants from the VAE's own config.

    ``encode`` takes the posterior's mean (deterministic, so an edit replays exactly); ``decode``
    clamps to the data range. ``vae`` is any object with ``encode(x).mode()``, ``decode(z)``,
    ``normalize``/``denormalize`` and a ``config`` with ``in_channels``, ``latent_channels`` and
    ``downscale`` (difflab's :class:`~difflab.models.vae.AutoencoderKL`).
    """

    def __init__(self, vae):
        self.vae = vae
        self.channels = vae.config.in_channels
        self.latent_channels = vae.config.latent_channels
        self.downsampling = vae.config.downscale

    def _vae_input(self, x: torch.Tensor) -> torch.Tensor:
        parameter = next(self.vae.parameters())  # the VAE may run in half precision (pipe.to(dtype=...))
        return x.to(device=parameter.device, dtype=parameter.dtype)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.normalize(self.vae.encode(self._vae_input(x)).mode()).to(x.dtype)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(self.vae.denormalize(self._vae_input(z))).clamp(-1, 1).to(z.dtype)

    def __repr__(self) -> str:
        return f"VAECodec(latent_channels={self.latent_channels}, downsampling={self.downsampling})"
