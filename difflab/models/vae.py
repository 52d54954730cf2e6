"""KL-regularised autoencoder, Kingma & Welling (2014); the latent space of Rombach et al. (2022).

``encode(x) -> DiagonalGaussian`` over latents ``z`` [B, latent_channels, H/f, W/f] with
``f = 2^(levels-1)``; ``decode(z) -> x``. A diffusion model works on normalised latents,
``(z - shift_factor) * scaling_factor`` (:meth:`AutoencoderKL.normalize`), whose constants live
in the config (Stable Diffusion's VAE: 0.18215 and 0; FLUX's: 0.3611 and 0.1159), never in
scripts. Training comes with the trainer.

``encoder="area"`` makes the first stage of a cascade instead (Ho et al. 2022, "Cascaded diffusion
models", Sec. 3): the encoder is fixed 2^(levels-1) x 2^(levels-1) area pooling, so the latent *is* the
image at a lower resolution and a pixel model trained at that resolution already works in it; the
learned decoder is a super-resolution network that adds its correction to the bicubic upsampling of z
(global residual learning, Kim et al. 2016, "VDSR"), starting as plain bicubic. Its posterior is a
fixed Gaussian of std ``posterior_std`` around the pooled image: training decodes noisy latents, the
conditioning augmentation of cascaded models (Ho et al. 2022, Sec. 4.1) that keeps the decoder robust to
a generator's slightly-off latents; ``mode()`` is the clean pooled image. The KL term is a constant.

The defaults are difflab's own small VAE. The config also expresses the autoencoders of Stable
Diffusion 1.x / 2.x and SDXL (Rombach et al. 2022: GroupNorm eps 1e-6, downsampling by a zero pad
on the right and bottom then an unpadded stride-2 convolution, 1x1 convolutions on the posterior's
moments and on z) and of SD3 / FLUX (16 latent channels, no 1x1 convolutions, a shift factor):
:data:`VAE_CONFIGS` names them, :meth:`AutoencoderKLConfig.from_diffusers` reads a diffusers
``vae/config.json``, and :mod:`difflab.convert.diffusers_vae` maps their weights in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from difflab.models.base import ModelMixin, is_int, register_model, require
from difflab.models.layers import AttentionBlock, Downsample, ResBlock, Upsample, group_norm, groups_for


DOWNSAMPLE_PADDINGS = ("symmetric", "asymmetric")
ENCODERS = ("learned", "area")
# diffusers AutoencoderKL config keys: read, supported at one value only, or without effect here.
_DIFFUSERS_READ = ("in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
                   "layers_per_block", "latent_channels", "norm_num_groups", "scaling_factor", "shift_factor",
                   "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention")
_DIFFUSERS_FIXED = {"act_fn": "silu", "latents_mean": None, "latents_std": None}
# sample_size: diffusers' tiling tile size; force_upcast: a dtype hint (the caller picks the dtype).
_DIFFUSERS_IGNORED = ("sample_size", "force_upcast")


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
    norm_eps: float = 1e-5                        # every GroupNorm's epsilon (SD's VAEs: 1e-6)
    downsample_padding: str = "symmetric"         # stride-2 3x3 conv padded by 1; "asymmetric": SD's (_PadDownsample)
    quant_conv: bool = False                      # 1x1 conv on the posterior's moments (SD 1.x/2.x, SDXL)
    post_quant_conv: bool = False                 # 1x1 conv on z before the decoder (SD 1.x/2.x, SDXL)
    encoder: str = "learned"                      # "area": fixed area pooling, latent = the image at 1/downscale
    posterior_std: float = 0.0                    # encoder="area": std of the fixed posterior (training noise)

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
        require(isinstance(self.norm_eps, float) and 0 < self.norm_eps < 1,
                f"norm_eps must be in (0, 1), got {self.norm_eps!r}")
        require(self.downsample_padding in DOWNSAMPLE_PADDINGS,
                f"downsample_padding must be one of {DOWNSAMPLE_PADDINGS}, got {self.downsample_padding!r}")
        for name in ("quant_conv", "post_quant_conv"):
            require(isinstance(getattr(self, name), bool), f"{name} must be true or false, got {getattr(self, name)!r}")
        require(self.encoder in ENCODERS, f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        require(isinstance(self.posterior_std, (int, float)) and not isinstance(self.posterior_std, bool)
                and 0 <= self.posterior_std <= 1, f"posterior_std must be a number in [0, 1], got {self.posterior_std!r}")
        if self.encoder == "area":
            require(self.latent_channels == self.in_channels and len(self.channels) > 1 and not self.quant_conv,
                    f"encoder='area' pools the image itself: it needs latent_channels == in_channels "
                    f"({self.latent_channels} vs {self.in_channels}), at least two levels and no quant_conv")
        else:
            require(self.posterior_std == 0, "posterior_std is for encoder='area' (a learned encoder predicts its own)")

    @classmethod
    def from_diffusers(cls, config: dict) -> AutoencoderKLConfig:
        """The config of a diffusers ``AutoencoderKL`` (its ``vae/config.json``), refusing what difflab lacks.

        ``block_out_channels`` and the block types are required; other absent keys take diffusers'
        defaults (``scaling_factor`` 0.18215, quant convs on). The GroupNorm eps is diffusers' fixed
        1e-6 and downsampling is SD's asymmetric kind.
        """
        require(isinstance(config, dict), f"a diffusers VAE config must be a JSON object, got {type(config).__name__}")
        c = {k: v for k, v in config.items() if not k.startswith("_")}
        _check_diffusers_config(c)
        shift = c.get("shift_factor")
        try:
            return cls(in_channels=c.get("in_channels", 3), latent_channels=c.get("latent_channels", 4),
                       channels=tuple(c["block_out_channels"]), layers_per_block=c.get("layers_per_block", 1),
                       mid_attention=c.get("mid_block_add_attention", True), norm_groups=c.get("norm_num_groups", 32),
                       scaling_factor=c.get("scaling_factor", 0.18215), shift_factor=0.0 if shift is None else shift,
                       norm_eps=1e-6, downsample_padding="asymmetric", quant_conv=c.get("use_quant_conv", True),
                       post_quant_conv=c.get("use_post_quant_conv", True))
        except ValueError as e:
            raise ValueError(f"diffusers VAE config: {e}") from None

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.channels) - 1)


def _check_diffusers_config(c: dict) -> None:
    """Refuse, in one line, a diffusers AutoencoderKL setting that difflab's network does not have."""
    what = "diffusers VAE config"
    unknown = sorted(set(c) - set(_DIFFUSERS_READ) - set(_DIFFUSERS_FIXED) - set(_DIFFUSERS_IGNORED))
    require(not unknown, f"{what}: unknown key(s) {unknown}; difflab reads {sorted(_DIFFUSERS_READ)}")
    for key, allowed in _DIFFUSERS_FIXED.items():
        require(c.get(key, allowed) == allowed,
                f"{what}: {key}={c.get(key)!r} is not supported (difflab supports {allowed!r} only)")
    widths = c.get("block_out_channels")
    require(isinstance(widths, (list, tuple)) and widths and all(is_int(w) for w in widths),
            f"{what}: block_out_channels must be a list of positive integers, got {widths!r}")
    for key, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        types = c.get(key)
        require(isinstance(types, (list, tuple)) and list(types) == [kind] * len(widths),
                f"{what}: {key} must be {len(widths)} x {kind!r} (one per block_out_channels entry), got {types}")
    for key in ("use_quant_conv", "use_post_quant_conv", "mid_block_add_attention"):
        require(isinstance(c.get(key, True), bool), f"{what}: {key} must be true or false, got {c.get(key)!r}")
    in_channels, out_channels, groups = c.get("in_channels", 3), c.get("out_channels", 3), c.get("norm_num_groups", 32)
    require(out_channels == in_channels, f"{what}: out_channels={out_channels!r} differs from "
                                         f"in_channels={in_channels!r} (difflab supports equal ones only)")
    require(is_int(groups) and all(w % groups == 0 for w in widths),
            f"{what}: norm_num_groups={groups!r} must divide every block_out_channels entry {list(widths)}")


# The published autoencoders as configs (their diffusers vae/config.json values), for single files without one.
_SD_VAE = dict(channels=(128, 256, 512, 512), layers_per_block=2, norm_eps=1e-6, downsample_padding="asymmetric")
VAE_CONFIGS = {
    "sd": AutoencoderKLConfig(**_SD_VAE, scaling_factor=0.18215, quant_conv=True, post_quant_conv=True),
    "sdxl": AutoencoderKLConfig(**_SD_VAE, scaling_factor=0.13025, quant_conv=True, post_quant_conv=True),
    "sd3": AutoencoderKLConfig(**_SD_VAE, latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609),
    "flux": AutoencoderKLConfig(**_SD_VAE, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159),
}


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


class _PadDownsample(Downsample):
    """Stable Diffusion's downsampling: zero-pad one column right and one row below, then the
    3x3 stride-2 convolution unpadded, so output pixel (i, j) sees input rows and columns 2i..2i+2."""

    def __init__(self, channels: int):
        super().__init__(channels)
        self.conv.padding = (0, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))                             # [B, C, H/2, W/2]


class _Coder(nn.Module):
    """Encoder (down=True) or decoder: levels of ResNet blocks around a middle with attention."""

    def __init__(self, cfg: AutoencoderKLConfig, c_in: int, c_out: int, down: bool):
        super().__init__()
        ch, g, n = cfg.channels, cfg.norm_groups, cfg.layers_per_block + (0 if down else 1)
        widths = list(ch) if down else list(reversed(ch))
        downsample = _PadDownsample if cfg.downsample_padding == "asymmetric" else Downsample
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
                self.blocks.append(downsample(c) if down else Upsample(c))
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
        area = cfg.encoder == "area"
        self.encoder = None if area else _Coder(cfg, cfg.in_channels, 2 * cfg.latent_channels, down=True)
        self.decoder = _Coder(cfg, cfg.latent_channels, cfg.in_channels, down=False)
        if area:  # the decoder's correction starts at zero: the untrained decoder is bicubic upsampling
            nn.init.zeros_(self.decoder.conv_out.weight)
            nn.init.zeros_(self.decoder.conv_out.bias)
        moments, z = 2 * cfg.latent_channels, cfg.latent_channels
        self.quant_conv = nn.Conv2d(moments, moments, 1) if cfg.quant_conv else None
        self.post_quant_conv = nn.Conv2d(z, z, 1) if cfg.post_quant_conv else None
        for norm in self.modules():
            if isinstance(norm, nn.GroupNorm):
                norm.eps = cfg.norm_eps
        self.to(memory_format=torch.channels_last)

    def _check(self, x, channels, what):
        f = self.config.downscale if what == "x" else 1
        if x.dim() != 4 or x.shape[1] != channels or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"{what} must have shape [B, {channels}, H, W]" + (f" with H and W divisible by {f}" if f > 1 else "")
                             + f", got {list(x.shape)}")

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """x [B, C, H, W] (in [-1, 1]) -> posterior over z [B, latent_channels, H/f, W/f]."""
        self._check(x, self.config.in_channels, "x")
        if self.encoder is None:                                              # encoder="area"
            mean = F.avg_pool2d(x, self.config.downscale)                     # [B, C, h, w]
            std = max(self.config.posterior_std, 1e-12)
            return DiagonalGaussian(torch.cat([mean, torch.full_like(mean, 2 * math.log(std))], dim=1))
        moments = self.encoder(x)                                             # [B, 2*latent, h, w]
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian(moments.contiguous())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, latent_channels, h, w] -> x [B, C, h*f, w*f]."""
        self._check(z, self.config.latent_channels, "z")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        if self.encoder is None:                                              # encoder="area": a residual on bicubic
            base = F.interpolate(z, scale_factor=self.config.downscale, mode="bicubic", align_corners=False)
            return (base + self.decoder(z)).contiguous()
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
