"""Image encoders for image prompts (IP-Adapter, :mod:`difflab.models.ip_adapter`): images -> one feature each.

IP-Adapter (Ye et al. 2023, Sec. 3.2) reads an image prompt through a frozen image encoder's global
embedding. For the shapes world difflab ships its own, so nothing is downloaded:

- ``shapes-objects`` (the default for new adapters): a CNN trained to name which colour-shape pairs a
  scene holds, how many of each, their sizes and the background, wherever they lie
  (:mod:`difflab.train.image_encoder`);
- ``shapes``: the FID feature network (:func:`difflab.metrics.features.load_feature_net`), which the
  first adapters used; it describes layouts well and object identities poorly.

An encoder has ``feature_dim`` and maps images to ``[B, feature_dim]``; another (a CLIP vision model
from a local folder) would follow the same contract.
"""

from __future__ import annotations

import torch
from torch import nn

from difflab.data.images import to_images
from difflab.metrics.features import ASSETS, as_uint8_batch, load_feature_file, load_feature_net

DEFAULT_IMAGE_ENCODER = "shapes-objects"
OBJECTS_WEIGHTS = ASSETS / "image_encoder_shapes_objects.safetensors"   # written by difflab.train.image_encoder


class ShapesImageEncoder(nn.Module):
    """Frozen shapes feature network: PIL images, uint8 pixels or float [B, 3, H, W] in [-1, 1] -> [B, 64],
    standardised by the shipped reference features' mean and std (unit scale, as FID uses them)."""

    def __init__(self):
        super().__init__()
        self.net = self.load()                                                # eval mode, requires_grad False
        self.feature_dim = self.net.num_features

    def load(self):
        return load_feature_net("shapes")[0]

    @torch.no_grad()
    def forward(self, images) -> torch.Tensor:
        """Images -> [B, feature_dim]. A float tensor is read as pixels ``v / 127.5 - 1`` (difflab's image
        convention, :mod:`difflab.data.images`) and rounded to them, as saving it would, so a tensor and
        the PIL images it came from give the same features."""
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            if images.dim() != 4 or images.shape[1] != 3 or not torch.isfinite(images).all():
                raise ValueError(f"image tensors must be finite floats [B, 3, H, W] in [-1, 1], got "
                                 f"{images.dtype} {list(images.shape)}")
            images = to_images(images)                                       # clipped, rounded pixels
        pixels = as_uint8_batch(images)                                       # [B, 3, H, W] uint8
        return self.net(pixels.to(self.net.feature_mean.device)).float()    # [B, feature_dim]


class ShapesObjectsEncoder(ShapesImageEncoder):
    """The object encoder (:mod:`difflab.train.image_encoder`): images -> [B, 128], standardised by the
    features of 2000 test-split renders."""

    def load(self):
        if not OBJECTS_WEIGHTS.is_file():
            raise FileNotFoundError(f"{OBJECTS_WEIGHTS} is missing; run `python -m difflab.train.image_encoder`")
        return load_feature_file(OBJECTS_WEIGHTS)[0]


IMAGE_ENCODERS = {"shapes": ShapesImageEncoder, "shapes-objects": ShapesObjectsEncoder}   # name (an IPAdapterConfig's image_encoder) -> class


def image_encoder(name: str) -> nn.Module:
    """The image encoder called ``name`` (an IP-Adapter package's ``config.image_encoder``)."""
    if name not in IMAGE_ENCODERS:
        raise ValueError(f"unknown image encoder {name!r}; available: {', '.join(IMAGE_ENCODERS)}")
    return IMAGE_ENCODERS[name]()
