"""ControlNet (Zhang et al. 2023) for the Stable Diffusion UNet, :class:`~difflab.models.sd_unet.SDUNet`.

A trainable copy of the UNet's encoder (``conv_in``, the time and SDXL's added embedding, the down
levels and the middle: :meth:`SDUNet.build_encoder`, the same blocks) reads the noisy latent, the
time and the text and, added to ``conv_in``'s output, the control image through a small convolutional
*hint encoder* ``c_f = E(c_i)`` (Sec. 3.3) that brings it down to the latent size. Each of the copy's
skip features (diffusers' ``down_block_res_samples``) and its middle output passes through a
zero-initialised 1x1 convolution ("zero convolution", Sec. 3.1) and is added to the frozen UNet's own
(eq. 2: ``y_c = F(x) + Z(F(x + Z(c)))``)::

    skips, mid = controlnet(z_t, t, control, context=tokens)      # control [B, 3, 8H, 8W] in [0, 1]
    unet(z_t, t, context=tokens, control_residuals=(skips, mid))

The network is diffusers' ``ControlNetModel`` for SD 1.x/2.x and SDXL (``addition_embed_type
"text_time"``: then ``pooled`` and ``time_ids`` as SDUNet takes them); its weights load through
:mod:`difflab.convert.diffusers_controlnet`. The conditioning scale is not applied here: a caller
multiplies the residuals (:class:`difflab.models.controlnet.Control`'s ``scale``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from difflab.models.base import is_int, register_model, require
from difflab.models.controlnet import zero_conv
from difflab.models.sd_unet import SDUNet, SDUNetConfig

# diffusers ControlNetModel settings of its own (the rest are UNet2DConditionModel's, read by SDUNetConfig).
_CONTROL_KEYS = ("conditioning_channels", "conditioning_embedding_out_channels",
                 "controlnet_conditioning_channel_order", "global_pool_conditions")
_UP_OF_DOWN = {"CrossAttnDownBlock2D": "CrossAttnUpBlock2D", "DownBlock2D": "UpBlock2D"}
# The UNet's fields that are its decoder's (or informative): a ControlNet has none of them.
_DECODER_FIELDS = ("out_channels", "up_attention", "sample_size")


@dataclass(frozen=True)
class SDControlNetConfig(SDUNetConfig):
    """The UNet's config (its encoder's fields are the ControlNet's; ``out_channels``, ``up_attention``
    and ``sample_size`` describe the UNet's decoder, which the ControlNet lacks, and are not compared
    by :meth:`SDControlNet.steers`) and the hint encoder's: the control image's channels
    (``conditioning_channels``), the hint encoder's widths (``conditioning_embedding_out_channels``; one
    2x downsampling between consecutive ones) and whether it reads the image as BGR."""

    control_channels: int = 3
    hint_channels: tuple[int, ...] = (16, 32, 96, 256)
    bgr: bool = False

    def __post_init__(self):
        super().__post_init__()
        require(is_int(self.control_channels),
                f"control_channels must be a positive integer, got {self.control_channels!r}")
        require(isinstance(self.hint_channels, tuple) and len(self.hint_channels) >= 1
                and all(is_int(c) for c in self.hint_channels),
                f"hint_channels must be a non-empty tuple of positive integers, got {self.hint_channels!r}")
        require(isinstance(self.bgr, bool), f"bgr must be true or false, got {self.bgr!r}")

    @classmethod
    def from_diffusers(cls, config: dict) -> SDControlNetConfig:
        """The config of a diffusers ``ControlNetModel`` (its ``config.json``), refusing what SDControlNet lacks.

        Its UNet settings are read by :meth:`SDUNetConfig.from_diffusers`; the decoder it does not
        have is taken to mirror the encoder (as in every SD UNet)."""
        require(isinstance(config, dict),
                f"a diffusers ControlNet config must be a JSON object, got {type(config).__name__}")
        unet = {k: v for k, v in config.items() if k not in _CONTROL_KEYS}
        down = unet.get("down_block_types", ())
        if isinstance(down, (list, tuple)):
            unet["up_block_types"] = [_UP_OF_DOWN.get(b, b) for b in reversed(down)]
        unet["out_channels"] = unet.get("in_channels", 4)
        try:
            base = SDUNetConfig.from_diffusers(unet)
        except ValueError as error:
            raise ValueError(f"diffusers ControlNet config (its UNet part): {error}") from None
        require(config.get("global_pool_conditions", False) is False,
                "diffusers ControlNet config: global_pool_conditions=true (pooled residuals, shuffle ControlNets) "
                "is not supported (false only)")
        order = config.get("controlnet_conditioning_channel_order", "rgb")
        require(order in ("rgb", "bgr"), "diffusers ControlNet config: controlnet_conditioning_channel_order "
                                         f"must be 'rgb' or 'bgr', got {order!r}")
        hint = config.get("conditioning_embedding_out_channels", (16, 32, 96, 256))
        return cls(**dataclasses.asdict(base), control_channels=config.get("conditioning_channels", 3),
                   hint_channels=tuple(hint) if isinstance(hint, list) else hint, bgr=order == "bgr")


class HintEncoder(nn.Module):
    """The control image -> conv_in's width at the latent size, ``c_f = E(c_i)`` (Zhang et al. 2023,
    Sec. 3.3), as diffusers' ``ControlNetConditioningEmbedding`` builds ``E``: a 3x3 convolution into
    the first width, then for each further width a 3x3 convolution and a stride-2 one into it, SiLU
    after each, and a zero-initialised 3x3 convolution out (a new ControlNet adds nothing)."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], out_channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for a, b in zip(widths, widths[1:]):
            self.blocks.extend([nn.Conv2d(a, a, 3, padding=1), nn.Conv2d(a, b, 3, padding=1, stride=2)])
        self.conv_out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, control: torch.Tensor) -> torch.Tensor:
        """control [B, C, sH, sW] -> [B, out_channels, H, W], s = 2^(len(widths) - 1)."""
        h = F.silu(self.conv_in(control))                                      # [B, w_0, sH, sW]
        for conv in self.blocks:
            h = F.silu(conv(h))                                                # halved by every second one
        return self.conv_out(h)                                                # [B, out_channels, H, W]


@register_model
class SDControlNet(SDUNet):
    """SDControlNet(config=SDControlNetConfig(...)); from a diffusers folder with
    :func:`difflab.convert.diffusers_controlnet.load_diffusers_controlnet`, or new with :meth:`from_unet`."""

    config_class = SDControlNetConfig

    def build(self, cfg: SDControlNetConfig) -> None:
        skip_widths = self.build_encoder(cfg)                                  # the UNet's encoder, same names
        self.hint = HintEncoder(cfg.control_channels, cfg.hint_channels, cfg.channels[0])
        self.zero_convs = nn.ModuleList(zero_conv(w) for w in skip_widths)
        self.zero_mid = zero_conv(cfg.channels[-1])

    @property
    def hint_stride(self) -> int:
        """How many times larger than the latent the control image is (8 for the published ControlNets)."""
        return 2 ** (len(self.config.hint_channels) - 1)

    def steers(self, model) -> bool:
        """Whether this ControlNet was made for ``model``: an SDUNet whose encoder has this config."""
        return not self.mismatch(model)

    def mismatch(self, model) -> str:
        """Why this ControlNet does not steer ``model`` ('' when it does)."""
        if type(model) is not SDUNet:
            return f"it steers a Stable Diffusion UNet (SDUNet), not a {type(model).__name__}"
        names = [f.name for f in dataclasses.fields(SDUNetConfig) if f.name not in _DECODER_FIELDS]
        differ = [f"{k} {getattr(self.config, k)!r} vs {getattr(model.config, k)!r}" for k in names
                  if getattr(self.config, k) != getattr(model.config, k)]
        return f"its UNet's {', '.join(differ)} (ControlNet vs model)" if differ else ""

    @classmethod
    def from_unet(cls, unet: SDUNet, control_channels: int = 3,
                  hint_channels: tuple[int, ...] = (16, 32, 96, 256)) -> SDControlNet:
        """A new ControlNet of ``unet``: its encoder copy starts as the UNet's, its residuals at 0 (Sec. 3.1)."""
        require(type(unet) is SDUNet, f"an SDControlNet is built from an SDUNet, got a {type(unet).__name__}")
        cfg = SDControlNetConfig(**dataclasses.asdict(unet.config), control_channels=control_channels,
                                 hint_channels=tuple(hint_channels))
        parameter = next(unet.parameters())
        net = cls(config=cfg).to(parameter.device, parameter.dtype)
        target = net.state_dict()
        net.load_state_dict({**target, **{k: v for k, v in unet.state_dict().items() if k in target}})
        return net

    def forward(self, x, t, control, context=None, pooled=None, time_ids=None):
        """x [B, C_in, H, W], t [B] or scalar, control [B, control_channels, sH, sW] in [0, 1]
        (s = :attr:`hint_stride`), context [B, L, D] (SDXL: pooled, time_ids as SDUNet) ->
        (skip residuals, one per skip feature in diffusers' order, and the middle residual)."""
        self.check_input(x, context, pooled, time_ids)
        s, cfg = self.hint_stride, self.config
        expected = [x.shape[0], cfg.control_channels, x.shape[2] * s, x.shape[3] * s]
        require(control.dim() == 4 and list(control.shape) == expected,
                f"control must have shape {expected} (values in [0, 1]), got {list(control.shape)}")
        emb = self.embed(x, t, pooled, time_ids)                               # [B, E]
        control = (control.flip(1) if cfg.bgr else control).to(x.dtype)        # [B, C, sH, sW]
        h = self.conv_in(x) + self.hint(control)                               # [B, ch0, H, W]: x + Z(c)
        h, skips = self.encode(h, emb, context)                                # F(x + Z(c)), every skip
        return [zero(skip) for zero, skip in zip(self.zero_convs, skips)], self.zero_mid(h)
