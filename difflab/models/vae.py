"""KL-regularised autoencoder, Kingma & Welling (2014); the latent space of Rombach et al. (2022).

``encode(x) -> DiagonalGaussian`` over latents ``z`` [B, latent_channels, H/f, W/f] with
``f = 2^(levels-1)``; ``decode(z) -> x``. A diffusion model works on normalised latents,
``(z - shift_factor) * scaling_factor`` (:meth:`AutoencoderKL.normalize`), whose constants live
in the config (Stable Diffusion's VAE: 0.18215 and 0; FLUX's: 0.3611 and 0.1159), never in
scripts. Training comes with the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from difflab.models.base import ModelMixin, is_int, register_model, require
from difflab.models.layers import AttentionBlock, Downsample, ResBlock, Upsample, group_norm, groups_for


@dataclass(frozen=True)
class AutoencoderKLConfig:
    """Architecture and latent normalisation of an :class:`AutoencoderKL`."""

    in_channels: int = 3
    latent_channels: int = 4
    channels: tuple[int, ...] = (64, 128, 128)    # width per level; each level but the last halves H, W
    layers_per_block: int = 1
    mid_attention: bool = True
    norm_groups: int = 32
    scaling_factor: float = 1.0
    shift_factor: float = 0.0

    def __post_init__(self):
        for name in ("in_channels", "latent_channels", "layers_per_block", "norm_groups"):
            require(is_int(getattr(self, name)), f"{name} must be a positive integer, got {getattr(self, name)!r}")
        require(isinstance(self.channels, tuple) and self.channels and all(is_int(c) for c in self.channels),
                f"channels must be a non-empty tuple of positive integers, got {self.channels!r}")
        require(isinstance(self.mid_attention, bool), f"mid_attention must be true or false, got {self.mid_attention!r}")
        for name in ("scaling_factor", "shift_factor"):
            value = getattr(self, name)
            require(isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < float("inf"),
                    f"{name} must be a finite number, got {value!r}")
        require(self.scaling_factor != 0, "scaling_factor must be non-zero")

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.channels) - 1)


class DiagonalGaussian:
    """Posterior q(z | x) = N(mean, diag(exp(logvar))) (Kingma & Welling, 2014, sec. 2.4)."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)                            # [B, c, h, w] each
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised sample z = mean + std * eps."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample, summed over latent elements (Kingma & Welling, appendix B)."""
        return 0.5 * (self.mean.square() + self.logvar.exp() - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class _Coder(nn.Module):
    """Encoder (down=True) or decoder: levels of ResNet blocks around a middle with attention."""

    def __init__(self, cfg: AutoencoderKLConfig, c_in: int, c_out: int, down: bool):
        super().__init__()
        ch, g, n = cfg.channels, cfg.norm_groups, cfg.layers_per_block + (0 if down else 1)
        widths = list(ch) if down else list(reversed(ch))
        self.conv_in = nn.Conv2d(c_in, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        mid = [ResBlock(ch[-1], ch[-1], groups=g), AttentionBlock(ch[-1], ch[-1], groups=g) if cfg.mid_attention
               else nn.Identity(), ResBlock(ch[-1], ch[-1], groups=g)]
        if not down:
            self.blocks.extend(mid)
        for i, c in enumerate(widths):
            c_prev = widths[max(i - 1, 0)]
            self.blocks.extend(ResBlock(c_prev if j == 0 else c, c, groups=g) for j in range(n))
            if i < len(widths) - 1:
                self.blocks.append(Downsample(c) if down else Upsample(c))
        if down:
            self.blocks.extend(mid)
        self.norm_out = nn.GroupNorm(groups_for(widths[-1], g), widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], c_out, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x.contiguous(memory_format=torch.channels_last))
        for block in self.blocks:
            h = block(h)
        return self.conv_out(group_norm(h, self.norm_out, act=True))


@register_model
class AutoencoderKL(ModelMixin):
    """AutoencoderKL(in_channels=3, latent_channels=4, channels=(64, 128, 128), ...)."""

    config_class = AutoencoderKLConfig

    def build(self, cfg: AutoencoderKLConfig) -> None:
        self.encoder = _Coder(cfg, cfg.in_channels, 2 * cfg.latent_channels, down=True)
        self.decoder = _Coder(cfg, cfg.latent_channels, cfg.in_channels, down=False)
        self.to(memory_format=torch.channels_last)

    def _check(self, x, channels, what):
        f = self.config.downscale if what == "x" else 1
        if x.dim() != 4 or x.shape[1] != channels or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"{what} must have shape [B, {channels}, H, W]" + (f" with H and W divisible by {f}" if f > 1 else "")
                             + f", got {list(x.shape)}")

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """x [B, C, H, W] (in [-1, 1]) -> posterior over z [B, latent_channels, H/f, W/f]."""
        self._check(x, self.config.in_channels, "x")
        return DiagonalGaussian(self.encoder(x).contiguous())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, latent_channels, h, w] -> x [B, C, h*f, w*f]."""
        self._check(z, self.config.latent_channels, "z")
        return self.decoder(z).contiguous()

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents -> the diffusion model's space: (z - shift_factor) * scaling_factor."""
        return (z - self.config.shift_factor) * self.config.scaling_factor

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`: latents / scaling_factor + shift_factor."""
        return latents / self.config.scaling_factor + self.config.shift_factor

    def forward(self, x, generator: torch.Generator | None = None):
        """Reconstruction and posterior of x (a sample from the posterior is decoded)."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior
