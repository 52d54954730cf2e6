"""Codecs: data space <-> the space a diffusion model works in.

A pipeline and its edits only ever ask the codec: how big is the model-space tensor for an output
of W x H (``model_shape``), what side lengths are allowed (``size_multiple``), how an image enters
(``encode``) and leaves (``decode``) model space, and how an edit mask shrinks to model space
(``downsample_mask``). So the same pipeline code runs a pixel model, a latent model behind a VAE
(``VAECodec``, latent diffusion: Rombach et al. 2022, Sec. 3) or an audio model behind a
spectrogram codec.

Data tensors are images in [-1, 1], ``[B, C, H, W]``; videos ``[B, C, T, H, W]`` (:class:`VideoCodec`);
sounds are log-mel spectrograms ``[B, 1, mels, frames]`` in [-1, 1] (:class:`AudioCodec`), which
leave as waveforms. ``outputs`` turns data tensors into what a :class:`~difflab.pipelines.Result`
holds: PIL images, video frames, waveforms.
"""

from __future__ import annotations

import torch


class Codec:
    """The interface. ``channels``: data channels; ``latent_channels``: model-space channels;
    ``downsampling``: data pixels per model-space pixel along each side."""

    channels: int
    latent_channels: int
    downsampling: int = 1
    media = "image"

    def outputs(self, x: torch.Tensor) -> dict:
        """Data-space tensors -> the fields of a Result: ``{"images": [PIL images]}`` here."""
        from difflab.data.images import to_images
        return {"images": to_images(x)}

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
        """An edit mask [B, 1, H, W] in data space -> model space (1 = regenerate).

        A model-space cell is regenerated, wholly, when any of its pixels is masked (conservative:
        every masked pixel decodes from a regenerated cell). The feathering of a soft mask is then
        applied in data space, after decoding (:meth:`compose`)."""
        if self.downsampling == 1:
            return mask
        return (torch.nn.functional.max_pool2d(mask, self.downsampling) > 0).to(mask.dtype)

    def compose(self, generated: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """An edit's result in data space: ``mask * generated + (1 - mask) * image``, so every pixel
        outside the mask (mask 0) is the input's exactly, whatever the decoder did near the seam.

        Without downsampling the model-space result already blended with this very mask (a soft
        mask feathers once, there); only the kept pixels are restored, exactly."""
        mask, image = mask.to(generated), image.to(generated)
        if self.downsampling == 1:
            return torch.where(mask > 0, generated, image)
        return mask * generated + (1 - mask) * image


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

    For outputs larger than the VAE comfortably decodes at once: ``slicing`` decodes one image of a
    batch at a time; ``tile`` (latent pixels) decodes overlapping tiles of ``tile`` x ``tile`` and
    blends them with weights that fall linearly across the ``overlap``, so peak memory follows the
    tile, not the image. Tiles see only their neighbourhood (the VAE's middle attention becomes
    local), so a tiled image differs slightly from a whole one, mostly near the seams.
    """

    def __init__(self, vae, slicing: bool = False, tile: int | None = None, overlap: int = 16):
        self.vae = vae
        self.channels = vae.config.in_channels
        self.latent_channels = vae.config.latent_channels
        self.downsampling = vae.config.downscale
        self.slicing = slicing
        self.set_tiling(tile, overlap)

    def set_tiling(self, tile: int | None = 64, overlap: int = 16) -> None:
        """Decode in ``tile`` x ``tile`` latent tiles overlapping by ``overlap`` (None: whole)."""
        if tile is not None and not (isinstance(tile, int) and isinstance(overlap, int) and 0 <= overlap < tile):
            raise ValueError(f"tiling needs integers 0 <= overlap < tile, got tile={tile!r}, overlap={overlap!r}")
        self.tile, self.overlap = tile, overlap

    def _vae_input(self, x: torch.Tensor) -> torch.Tensor:
        parameter = next(self.vae.parameters())  # the VAE may run in half precision (pipe.to(dtype=...))
        return x.to(device=parameter.device, dtype=parameter.dtype)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.normalize(self.vae.encode(self._vae_input(x)).mode()).to(x.dtype)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = self.vae.denormalize(self._vae_input(z))
        parts = z.split(1) if self.slicing else (z,)
        return torch.cat([self._decode(part) for part in parts]).clamp(-1, 1).to(z.dtype)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.tile is None or max(z.shape[-2:]) <= self.tile:
            return self.vae.decode(z)
        f, (height, width) = self.downsampling, z.shape[-2:]
        out = weight = None
        for top in _tile_starts(height, self.tile, self.overlap):
            for left in _tile_starts(width, self.tile, self.overlap):
                x = self.vae.decode(z[..., top:top + self.tile, left:left + self.tile])       # [B, C, t*f, t*f]
                w = _feather(x.shape[-2:], self.overlap * f, x)                               # [1, 1, t*f, t*f]
                if out is None:
                    out = x.new_zeros(*x.shape[:2], height * f, width * f)
                    weight = x.new_zeros(1, 1, height * f, width * f)
                rows, cols = slice(top * f, top * f + x.shape[-2]), slice(left * f, left * f + x.shape[-1])
                out[..., rows, cols] += x * w
                weight[..., rows, cols] += w
        return out / weight

    def __repr__(self) -> str:
        return f"VAECodec(latent_channels={self.latent_channels}, downsampling={self.downsampling})"


def _tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of ``tile`` covering 0..n, ``tile - overlap`` apart, the last flush with n."""
    starts = list(range(0, max(n - tile, 0) + 1, tile - overlap))
    if starts[-1] + tile < n:
        starts.append(n - tile)
    return starts


def _feather(shape, ramp: int, like: torch.Tensor) -> torch.Tensor:
    """Blend weights of one tile: 1 inside, falling linearly to 1/(ramp+1) at its edges (never 0, so
    a pixel that one tile alone covers keeps that tile's value exactly)."""
    def edge(n: int) -> torch.Tensor:
        distance = torch.minimum(torch.arange(n), torch.arange(n).flip(0)).to(like)           # to the nearer edge
        return ((distance + 1) / (ramp + 1)).clamp(max=1.0)
    return (edge(shape[0])[:, None] * edge(shape[1])[None, :])[None, None]


class VideoCodec(PixelCodec):
    """Pixel-space video: clips ``[B, C, T, H, W]`` of ``frames`` frames, model space = data space.

    ``outputs`` gives ``videos`` (uint8 arrays ``[T, H, W, C]``, as imageio and PyAV take them) and
    ``images`` (each clip as a filmstrip: its frames side by side, for grids and previews)."""

    media = "video"

    def __init__(self, channels: int = 3, frames: int = 8):
        super().__init__(channels)
        if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= 256:
            raise ValueError(f"frames must be an integer in [1, 256], got {frames!r}")
        self.frames = frames

    def model_shape(self, batch: int, width: int, height: int) -> tuple[int, ...]:
        return (batch, self.latent_channels, self.frames, height, width)

    def outputs(self, x: torch.Tensor) -> dict:
        from PIL import Image
        pixels = _pixels(x)                                                           # [B, C, T, H, W]
        videos = [clip.permute(1, 2, 3, 0).numpy() for clip in pixels]               # [T, H, W, C] each
        strips = [clip.transpose(1, 0, 2, 3).reshape(clip.shape[1], -1, clip.shape[3]) for clip in videos]
        return {"videos": videos, "images": [Image.fromarray(s[..., 0] if s.shape[-1] == 1 else s) for s in strips]}

    def __repr__(self) -> str:
        return f"VideoCodec(channels={self.channels}, frames={self.frames})"


class AudioCodec(Codec):
    """Sound as an image (Riffusion-style): model space is the normalised log-mel spectrogram of
    :mod:`difflab.data.spectrogram` (``[B, 1, mels, frames]``); ``outputs`` turns it back into
    waveforms by mel inversion and Griffin-Lim phase retrieval (Griffin & Lim 1984), and gives the
    spectrograms as images too (low frequencies at the bottom)."""

    media = "audio"
    channels = latent_channels = 1

    def __init__(self, iterations: int = 32):
        from difflab.data import spectrogram
        self.spectrogram, self.iterations = spectrogram, iterations
        self.sample_rate = spectrogram.SAMPLE_RATE

    def model_shape(self, batch: int, width: int, height: int) -> tuple[int, ...]:
        return (batch, 1, self.spectrogram.N_MELS, self.spectrogram.FRAMES)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z.clamp(-1, 1)

    def outputs(self, x: torch.Tensor) -> dict:
        from PIL import Image
        quantised = _pixels(x)                                                       # [B, 1, mels, frames] uint8
        pixels = quantised[:, 0].flip(1).numpy()                                     # low frequencies at the bottom
        # The sound is the inversion of the 8-bit spectrogram image (0.31 dB steps), one clip at a time:
        # a network's float output differs between batch sizes in its last bits, which the inversion
        # would carry into every sample; on the 8-bit grid a batch of N equals N single runs, as images do.
        waves = [self.spectrogram.spectrogram_to_waveform(spec[None].float() / 127.5 - 1, iterations=self.iterations)[0]
                 for spec in quantised]
        return {"audio": [w.numpy() for w in waves], "images": [Image.fromarray(p, "L") for p in pixels],
                "sample_rate": self.sample_rate}

    def __repr__(self) -> str:
        return f"AudioCodec(mels={self.spectrogram.N_MELS}, frames={self.spectrogram.FRAMES})"


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """Data in [-1, 1] -> uint8 on the CPU; a non-finite value (a diverged model) is an error, never a black pixel."""
    if not torch.isfinite(x).all():
        raise FloatingPointError("the model produced non-finite values; nothing was written")
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
