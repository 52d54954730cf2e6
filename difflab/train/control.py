"""Training a ControlNet (Zhang et al. 2023) on a frozen model: ``difflab train --controlnet KIND
--init-from MODEL``.

The network the trainer optimises is a :class:`~difflab.models.controlnet.ControlledUNet`: the package's
UNet, frozen, and a ControlNet whose encoder starts as a copy of it (zero convolutions at 0, so step 0
computes exactly what the package computes). Each training image's control (its layout map or its
edges, :mod:`difflab.data.controls`) is computed once and cached beside the image. The export is the
ControlNet alone, a package of its own (``class_name: ControlNet``) that records its kind and base.
"""

from __future__ import annotations

import torch

from difflab.data.controls import control_image
from difflab.data.images import to_uint8


def side_network(model, config, data):
    """``--controlnet`` / ``--ip-adapter``: the model wrapped with the side network that trains, and
    the per-position side input the trainer sets on it (control images, image-prompt features)."""
    if config.ip_adapter:
        from difflab.train.image_prompt import ReferenceFeatures, adapted
        wrapped, encoder = adapted(model, config)
        return wrapped, ReferenceFeatures(config, data, encoder)
    return controlled(model, config), ControlImages(config, data)


def controlled(model, config):
    """The package's network (already warm-started) wrapped with a fresh ControlNet of it."""
    from difflab.models.controlnet import ControlledUNet, ControlNet
    from difflab.models.unet import UNet
    if type(model) is not UNet:
        raise ValueError(f"--controlnet steers difflab's UNet; {config.init_from} holds a {type(model).__name__}")
    return ControlledUNet(model, ControlNet.from_unet(model))


class ControlImages:
    """The control image of each training position, as float tensors in [0, 1], computed once per item."""

    def __init__(self, config, data):
        self.kind, self.data, self.resolution = config.controlnet, data, config.resolution
        self._cache: dict[int, torch.Tensor] = {}

    def item(self, position: int) -> torch.Tensor:
        index = self.data.item_index(position)
        if index not in self._cache:
            item = self.data.dataset[index]
            image = item["image"].convert("RGB").resize((self.resolution, self.resolution))
            control = control_image(self.kind, image, item.get("scene"), self.resolution)
            self._cache[index] = to_uint8(control)[0]
        return self._cache[index]

    def batch(self, positions: list[int]) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1]."""
        return torch.stack([self.item(p) for p in positions]).float() / 255
