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
        from difflab.models.ip_adapter import IPAdapter
        from difflab.train.image_prompt import ReferenceFeatures, adapted
        wrapped, encoder = adapted(model, config, side_start(config, IPAdapter, model))
        return wrapped, ReferenceFeatures(config, data, encoder)
    return controlled(model, config), ControlImages(config, data)


def controlled(model, config):
    """The package's network (already warm-started) wrapped with a fresh ControlNet of it."""
    from difflab.models.controlnet import ControlledUNet, ControlNet
    from difflab.models.unet import UNet
    if type(model) is not UNet:
        raise ValueError(f"--controlnet steers difflab's UNet; {config.init_from} holds a {type(model).__name__}")
    return ControlledUNet(model, side_start(config, ControlNet, model) or ControlNet.from_unet(model))


def side_start(config, kind, model):
    """``side_from``: the ControlNet or IP-Adapter package a run goes on training (its weights; the
    optimiser starts afresh), refused unless it is a ``kind`` made for ``model`` (and, for a ControlNet,
    for the run's control kind). None without ``side_from``."""
    if not config.side_from:
        return None
    from difflab.models.package import load_package
    from difflab.settings import package_folder
    package = load_package(package_folder(config.side_from))
    net, what = package.model, kind.__name__
    if not isinstance(net, kind):
        raise ValueError(f"--side-from {config.side_from} holds a {type(net).__name__}, not the {what} this run trains")
    if not net.steers(model):
        raise ValueError(f"--side-from {config.side_from}: that {what} was made for another network than "
                         f"{config.init_from}'s")
    made_for = package.metadata.get("controlnet", {}).get("kind")
    if config.controlnet and made_for != config.controlnet:
        raise ValueError(f"--side-from {config.side_from} is a ControlNet for {made_for!r} control images; this run "
                         f"trains one for {config.controlnet!r}")
    return net


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
