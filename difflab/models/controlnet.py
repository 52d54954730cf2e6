"""ControlNet (Zhang et al. 2023) for difflab's :class:`~difflab.models.unet.UNet`.

A trainable copy of the UNet's encoder (``conv_in``, the down levels and the middle blocks) reads the
noisy input, the time and text conditioning and, added to ``conv_in``'s output, a control image through
a small convolutional *hint encoder* (Sec. 3.2: edges, layouts, ...). Each of the copy's skip
features and its middle output passes through a zero-initialised 1x1 convolution (the "zero
convolutions", Sec. 3.1) and is added to the frozen UNet's own (eq. 2)::

    controlnet = ControlNet.from_unet(unet)                  # the copy starts as the UNet's encoder
    skips, mid = controlnet(x_t, t, control, context=...)    # every residual is 0 at initialisation
    unet(x_t, t, context=..., control_residuals=(skips, mid))

so a new ControlNet changes nothing until training moves the zero convolutions, and the base model's
weights are never touched. ``hint_stride`` (a power of two) lets the control image be larger than the
network's input: 8 for a latent model whose VAE downsamples 8x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from difflab.models.base import SideTraining, is_int, register_model, require
from difflab.models.unet import UNet, UNetConfig

HINT_WIDTHS = (16, 32)     # the hint encoder's widths before its zero convolution


@dataclass(frozen=True)
class ControlNetConfig(UNetConfig):
    """A :class:`UNetConfig` (the base network's) and the control image's channels and stride."""

    control_channels: int = 3
    hint_stride: int = 1

    def __post_init__(self):
        super().__post_init__()
        require(is_int(self.control_channels), f"control_channels must be a positive integer, got {self.control_channels!r}")
        require(is_int(self.hint_stride) and self.hint_stride & (self.hint_stride - 1) == 0 and self.hint_stride <= 16,
                f"hint_stride must be a power of two up to 16, got {self.hint_stride!r}")

    def base_config(self) -> UNetConfig:
        """The UNet this ControlNet steers (same architecture fields)."""
        fields = {k: getattr(self, k) for k in UNetConfig.__dataclass_fields__}
        return UNetConfig(**fields)


def zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


@register_model
class ControlNet(UNet):
    """ControlNet(config=ControlNetConfig(...)); build one from a UNet with :meth:`from_unet`."""

    config_class = ControlNetConfig

    def build(self, cfg: ControlNetConfig) -> None:
        super().build(cfg)
        del self.up, self.upsample, self.norm_out, self.conv_out                 # the encoder alone
        self.res_blocks = [b[0] for lvl in self.down for b in lvl] + [self.mid_block1, self.mid_block2]
        self.scale_shift = nn.Linear(cfg.embed_dim, sum(2 * b.out_channels for b in self.res_blocks))
        layers, c_in = [], cfg.control_channels
        for width in HINT_WIDTHS:
            layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.SiLU()]
            c_in = width
        for _ in range(int(math.log2(cfg.hint_stride))):                         # 2x down per step
            layers += [nn.Conv2d(c_in, c_in, 3, stride=2, padding=1), nn.SiLU()]
        out = nn.Conv2d(c_in, cfg.channels[0], 3, padding=1)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.hint = nn.Sequential(*layers, out)
        self.zero_convs = nn.ModuleList(zero_conv(w) for w in self.skip_widths())
        self.zero_mid = zero_conv(cfg.channels[-1])
        self.to(memory_format=torch.channels_last)

    @property
    def hint_stride(self) -> int:
        """How many times larger than the network's input the control image is."""
        return self.config.hint_stride

    def steers(self, model) -> bool:
        """Whether this ControlNet was made for ``model`` (a UNet of the same architecture)."""
        return type(model) is UNet and self.config.base_config() == model.config

    def skip_widths(self) -> list[int]:
        """Channels of each skip feature, in the order the UNet's forward collects them."""
        cfg, widths = self.config, [self.config.channels[0]]
        for i, c in enumerate(cfg.channels):
            widths += [c] * cfg.layers_per_block + ([] if i == len(cfg.channels) - 1 else [c])
        return widths

    @classmethod
    def from_unet(cls, unet: UNet, control_channels: int = 3, hint_stride: int = 1) -> "ControlNet":
        """A ControlNet whose encoder copy starts as ``unet``'s (its zero convolutions at 0)."""
        require(type(unet) is UNet, f"a ControlNet is built from difflab's UNet, got a {type(unet).__name__}")
        fields = {k: getattr(unet.config, k) for k in UNetConfig.__dataclass_fields__}
        net = cls(config=ControlNetConfig(**fields, control_channels=control_channels, hint_stride=hint_stride))
        source, target = unet.state_dict(), net.state_dict()
        copied = {k: v for k, v in source.items() if k in target and v.shape == target[k].shape}
        rows = target["scale_shift.weight"].shape[0]             # the encoder's blocks come first in forward order
        copied["scale_shift.weight"], copied["scale_shift.bias"] = source["scale_shift.weight"][:rows], source["scale_shift.bias"][:rows]
        net.load_state_dict({**target, **copied})
        return net.to(next(unet.parameters()).device)

    def forward(self, x, t, control, context=None, context_mask=None, class_labels=None, pooled=None, guidance=None):
        """x [B, C_in, H, W], t, control [B, control_channels, H * hint_stride, W * hint_stride] ->
        (skip residuals, one per skip feature, and the middle residual)."""
        self.check_input(x, context, context_mask)
        cfg, s = self.config, self.config.hint_stride
        expected = [x.shape[0], cfg.control_channels, x.shape[2] * s, x.shape[3] * s]
        if control.dim() != 4 or list(control.shape) != expected:
            raise ValueError(f"control must have shape {expected}, got {list(control.shape)}")
        context, context_mask = self.refine_context(context, context_mask)
        emb = self.condition(t, x.shape[0], x.device, class_labels, pooled, guidance)
        scale_shift = iter(self.scale_shift(F.silu(emb)).split([2 * b.out_channels for b in self.res_blocks], 1))
        h = self.conv_in(x.contiguous(memory_format=torch.channels_last))
        h = h + self.hint(control.to(h.dtype).contiguous(memory_format=torch.channels_last))
        skips = [h]
        h = self._encode(h, skips, scale_shift, context, context_mask)
        return [zero(skip) for zero, skip in zip(self.zero_convs, skips)], self.zero_mid(h)



CONTROL_INPUTS = ("context", "context_mask", "class_labels", "pooled", "guidance")  # what a ControlNet reads


@dataclass
class Control:
    """One ControlNet at work: its control image ``[1 or B, C, H, W]`` in [0, 1], the scale of its
    residuals and the part of the sampling it acts in, as fractions of the noise level's way down
    (0 = pure noise, 1 = clean): active while ``start <= 1 - t / num_train_timesteps <= end``."""

    net: ControlNet
    image: torch.Tensor
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0


def control_residuals(controls: list[Control], x, t, cond: dict, num_train_timesteps: int = 1000):
    """The sum over the active controls of ``scale`` x each one's (skip, mid) residuals, or None when
    none is active. Under classifier-free guidance the batch holds the conditional and unconditional
    halves; a control image is repeated to cover both."""
    total = None
    t_max = float(t.max()) if torch.is_tensor(t) else float(t)
    kwargs = {k: v for k, v in cond.items() if k in CONTROL_INPUTS}
    for c in controls:
        if not c.start <= 1 - t_max / num_train_timesteps <= c.end or c.scale == 0:
            continue
        image = c.image.to(x.device)
        if image.shape[0] != x.shape[0]:
            image = image.repeat(x.shape[0] // image.shape[0], 1, 1, 1)
        skips, mid = c.net(x, t, image, **kwargs)
        if total is None:
            total = [s * c.scale for s in skips], mid * c.scale
        else:
            total = [a + s * c.scale for a, s in zip(total[0], skips)], total[1] + mid * c.scale
    return total


class ControlledUNet(SideTraining):
    """The network a ControlNet trains in: the frozen UNet and the ControlNet (``controlnet``), fed the
    batch's control images (``control``)."""

    side_name = "controlnet"

    def forward(self, x, t, **cond):
        skips, mid = self.controlnet(x, t, self.side_input(), **{k: v for k, v in cond.items() if k in CONTROL_INPUTS})
        return self.unet(x, t, control_residuals=(skips, mid), **cond)
