"""Image encoders for image prompts (IP-Adapter, :mod:`difflab.models.ip_adapter`): images -> one feature each.

IP-Adapter (Ye et al. 2023, Sec. 3.2) reads an image prompt through a frozen image encoder's global
embedding. For the shapes world difflab ships its own, so nothing is downloaded:

- ``shapes-objects`` (the default for new adapters): a CNN trained to name which colour-shape pairs a
  scene holds, how many of each, their sizes and the background, wherever they lie
  (:mod:`difflab.train.image_encoder`);
- ``shapes``: the FID feature network (:func:`difflab.metrics.features.load_feature_net`), which the
  first adapters used; it describes layouts well and object identities poorly.

For the official Stable Diffusion IP-Adapters, :class:`CLIPVisionEncoder` reads a CLIP vision model
(Radford et al. 2021) from a local transformers folder (``clip-vision``; nothing is downloaded).

An encoder has ``feature_dim`` and maps images to ``[B, feature_dim]``. A shapes encoder made with
``grid=True`` keeps its last feature map instead of pooling it: ``[B, grid_tokens, feature_dim]``, one
feature per cell of a coarse grid (4 x 4 at 32 x 32), each describing what lies there. These are the
fine-grained features IP-Adapter's "plus" variant reads (Ye et al. 2023, Sec. 4.3: patch features
instead of the global embedding): an object's colour and shape stay together in the cells it covers,
where a pooled feature holds every object's colour and shape summed together.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from difflab.data.images import to_images
from difflab.metrics.features import ASSETS, as_uint8_batch, load_feature_file, load_feature_net

DEFAULT_IMAGE_ENCODER = "shapes-objects"
MAX_SLOTS = 4          # objects a shapes-slots encoder reads one by one (the shapes world draws at most 3)
OBJECTS_WEIGHTS = ASSETS / "image_encoder_shapes_objects.safetensors"   # written by difflab.train.image_encoder


class ShapesImageEncoder(nn.Module):
    """Frozen shapes feature network: PIL images, uint8 pixels or float [B, 3, H, W] in [-1, 1] -> [B, 64],
    standardised by the shipped reference features' mean and std (unit scale, as FID uses them).
    ``grid=True``: -> [B, grid_tokens, 64], the last feature map's cells (row-major), each standardised
    by the same mean and std as the pooled feature (their average)."""

    def __init__(self, grid: bool = False):
        super().__init__()
        self.net = self.load()                                                # eval mode, requires_grad False
        self.feature_dim, self.grid = self.net.num_features, bool(grid)
        side = self.net.config.resolution // 2 ** len(self.net.config.widths)  # one stride-2 stage per width
        self.grid_tokens = side * side

    def load(self):
        return load_feature_net("shapes")[0]

    @torch.no_grad()
    def forward(self, images) -> torch.Tensor:
        """Images -> [B, feature_dim] (:meth:`pixels` says what images may be)."""
        pixels = self.pixels(images)                                         # [B, 3, H, W] uint8
        if not self.grid:
            return self.net(pixels).float()                                   # [B, feature_dim]
        return self.net.cells(pixels).float()                                # [B, grid_tokens, feature_dim]

    def pixels(self, images) -> torch.Tensor:
        """Images -> uint8 [B, 3, H, W] on the network's device. A float tensor is read as pixels
        ``v / 127.5 - 1`` (difflab's image convention, :mod:`difflab.data.images`) and rounded to them, as
        saving it would, so a tensor and the PIL images it came from give the same features."""
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            if images.dim() != 4 or images.shape[1] != 3 or not torch.isfinite(images).all():
                raise ValueError(f"image tensors must be finite floats [B, 3, H, W] in [-1, 1], got "
                                 f"{images.dtype} {list(images.shape)}")
            images = to_images(images)                                       # clipped, rounded pixels
        return as_uint8_batch(images).to(self.net.feature_mean.device)


class ShapesObjectsEncoder(ShapesImageEncoder):
    """The object encoder (:mod:`difflab.train.image_encoder`): images -> [B, 128], standardised by the
    features of 2000 test-split renders."""

    def load(self):
        if not OBJECTS_WEIGHTS.is_file():
            raise FileNotFoundError(f"{OBJECTS_WEIGHTS} is missing; run `python -m difflab.train.image_encoder`")
        return load_feature_file(OBJECTS_WEIGHTS)[0]


class ShapesSlotsEncoder(ShapesObjectsEncoder):
    """The object encoder read one object at a time (``shapes-slots``): images -> [B, 128], the whole
    picture's feature, as ``shapes-objects``; ``grid=True``: -> [B, 1 + MAX_SLOTS, 128], a *null slot*
    (zero) and then one *slot* per object in reading order (an upper row of the 3 x 3 grid first, then
    further left): the encoder's feature of the picture with only that object on its background
    (:func:`object_images`), zero where there are fewer objects.

    A slot holds one object's colour and shape and nothing else, so an adapter reading slots is told which
    colour goes with which shape; the cells of ``grid`` (:class:`ShapesImageEncoder`) cut objects apart and
    put neighbours together. The whole picture's feature is left out of the slots: it holds every object's
    colour and shape at once, and the adapter trained on from one that read it binds two different objects
    better without it (BENCHMARKS.md, "Slots only, in reading order"; that gain is not separated from the
    extra training steps). The null slot stays, so an adapter's projection turns it into a learned constant
    token, somewhere to look for a place no object is for. Slots carry no place, only their order: which
    object comes first in reading order, the one thing the shapes world's words say about an unplaced pair
    ("X and Y": X first, :func:`difflab.data.shapes.realize`), so the text-conditioned teacher of
    :class:`~difflab.train.image_prompt.SceneTeacher` and the slots agree on which object is drawn first.
    This is the object-centric reading of an image prompt (one token per object, as in slot attention,
    Locatello et al. 2020), with objects found by segmentation instead of learned."""

    def __init__(self, grid: bool = False):
        super().__init__(grid=False)
        self.grid, self.grid_tokens = bool(grid), 1 + MAX_SLOTS

    @torch.no_grad()
    def forward(self, images) -> torch.Tensor:
        pixels = self.pixels(images)
        if not self.grid:
            return self.net(pixels).float()                                   # [B, feature_dim]
        slots = torch.zeros(len(pixels), 1 + MAX_SLOTS, self.feature_dim, device=pixels.device)
        for i, picture in enumerate(pixels):
            alone = object_images(picture)
            if alone:
                slots[i, 1:1 + len(alone)] = self.net(torch.stack(alone)).float()
        return slots                                                          # [B, 1 + MAX_SLOTS, feature_dim]


def object_images(picture: torch.Tensor, limit: int | None = None) -> list[torch.Tensor]:
    """uint8 [3, H, W] -> one picture per object (the ``limit`` largest, default ``MAX_SLOTS``, in reading
    order: by the grid row of its centre, then its centre's column), each the input with every pixel
    outside that object set to the background. Objects are the shapes
    oracle's first segmentation (:mod:`difflab.metrics.detect`, steps 1-2): the border's median is the
    background, pixels far from it seed components, and each component owns the pixels near it (its
    anti-aliased edge); components smaller than the oracle's smallest object are noise and dropped."""
    import numpy as np

    from difflab.metrics.detect import MIN_AREA, SEED_DISTANCE, background_colour, owners
    rgb = picture.permute(1, 2, 0).cpu().numpy().astype(np.float64) / 255.0   # [H, W, 3] in [0, 1]
    height, width = rgb.shape[:2]
    background = background_colour(rgb)
    seeds = np.linalg.norm(rgb - background, axis=2) > SEED_DISTANCE
    labels, n = owners(seeds, 2.5 * width / 32)
    sizes = [(int((seeds & (labels == k)).sum()), k) for k in range(1, n + 1)]
    kept = sorted(((size, k) for size, k in sizes if size >= MIN_AREA * height * width), key=lambda sk: -sk[0])
    def reading(k: int) -> tuple[int, float]:               # (row of the world's 3 x 3 grid, column) of its centre
        rows, columns = np.nonzero(seeds & (labels == k))
        return min(int(3 * rows.mean() / height), 2), float(columns.mean())

    chosen = sorted((k for _, k in kept[:limit or MAX_SLOTS]), key=reading)
    fill = torch.from_numpy(np.round(background * 255)).to(picture)[:, None, None]   # [3, 1, 1]
    masks = [torch.from_numpy(labels == k).to(picture.device) for k in chosen]
    return [torch.where(mask, picture, fill) for mask in masks]


class CLIPVisionEncoder(nn.Module):
    """A CLIP image encoder from a local folder (transformers' ``CLIPVisionModelWithProjection``:
    ``config.json`` and ``model.safetensors``, as h94/IP-Adapter's ``models/image_encoder/``): images ->
    its projected embedding ``image_embeds`` [B, projection_dim], the global feature the base IP-Adapter
    reads (Ye et al. 2023, Sec. 3.2; diffusers passes the same to it).

    Images are prepared by the folder's ``CLIPImageProcessor`` (``preprocessor_config.json``: resize,
    centre crop, CLIP's mean and std); without one, by the processor's defaults at the model's
    ``image_size``, as diffusers does when its pipeline has no feature extractor. Only safetensors
    weights are read and nothing is downloaded (``local_files_only``). The model stays float32."""

    def __init__(self, folder):
        super().__init__()
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection
        folder = Path(folder).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} is not a CLIP image encoder folder (no config.json); "
                                    "h94/IP-Adapter ships it as models/image_encoder/")
        try:
            self.model = CLIPVisionModelWithProjection.from_pretrained(
                folder, local_files_only=True, use_safetensors=True, dtype=torch.float32).eval().requires_grad_(False)
        except (OSError, ValueError) as error:
            raise ValueError(f"{folder}: not a readable CLIPVisionModelWithProjection with safetensors weights "
                             f"({str(error).splitlines()[0][:200]})") from None
        size = self.model.config.image_size
        self.processor = (CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
                          if (folder / "preprocessor_config.json").is_file()
                          else CLIPImageProcessor(size=size, crop_size=size))
        self.feature_dim = self.model.config.projection_dim

    @torch.no_grad()
    def forward(self, images) -> torch.Tensor:
        """PIL images (or one), or a float tensor [B, 3, H, W] in [-1, 1] (read as its rounded pixels,
        :func:`difflab.data.images.to_images`) -> [B, feature_dim] float32."""
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
                raise ValueError(f"image tensors must be floats [B, 3, H, W] in [-1, 1], got "
                                 f"{images.dtype} {list(images.shape)}")
            images = to_images(images)
        pixels = self.processor(images=images, return_tensors="pt").pixel_values   # [B, 3, S, S]
        parameter = next(self.model.parameters())
        return self.model(pixel_values=pixels.to(parameter.device, parameter.dtype)).image_embeds.float()


# name (an IPAdapterConfig's image_encoder) -> class
IMAGE_ENCODERS = {"shapes": ShapesImageEncoder, "shapes-objects": ShapesObjectsEncoder,
                  "shapes-slots": ShapesSlotsEncoder}


def image_encoder(name: str, grid: bool = False) -> nn.Module:
    """The image encoder called ``name`` (an IP-Adapter package's ``config.image_encoder``); ``grid``: its
    per-cell features ``[B, grid_tokens, feature_dim]`` instead of the pooled ``[B, feature_dim]``."""
    if name not in IMAGE_ENCODERS:
        raise ValueError(f"unknown image encoder {name!r}; available: {', '.join(IMAGE_ENCODERS)}")
    return IMAGE_ENCODERS[name](grid=grid)
