"""Training an IP-Adapter (Ye et al. 2023) on a frozen model: ``difflab train --ip-adapter --init-from MODEL``.

The network the trainer optimises is an :class:`~difflab.models.ip_adapter.IPAdaptedUNet`: the
package's UNet, frozen, and an adapter whose image key/value projections start as the text ones.
Each item's image prompt is another render of the same objects (:mod:`difflab.train.ip_pairs`), or,
for a fraction ``ip_same_image`` of the samples, the training image itself (the paper's pairs, Sec.
3.3: an image prompt then also carries its layout and its count of objects), encoded once by the
image encoder (``shapes-objects``, :mod:`difflab.models.image_encoders`). As in the paper (Sec.
3.3) the image condition is dropped for a fraction of the samples (its features set to zero, what
the unconditional half of classifier-free guidance then uses), beside the text dropout of
``cond_dropout``.
"""

from __future__ import annotations

import random

import torch

from difflab.train.ip_pairs import pinned_prompt, reference_image

SLOTS_ENCODER = "shapes-slots"   # the encoder of --ip-tokens objects
IMAGE_DROPOUT = 0.1   # samples trained without their image prompt (zero features)


def adapted(model, config, start=None):
    """The package's UNet (already warm-started) wrapped with an IP-Adapter of it (``start``, or a fresh
    one), and its encoder."""
    from difflab.models.image_encoders import DEFAULT_IMAGE_ENCODER, image_encoder
    from difflab.models.ip_adapter import IPAdaptedUNet, IPAdapter
    from difflab.models.unet import UNet
    if type(model) is not UNet:
        raise ValueError(f"--ip-adapter adapts difflab's UNet; {config.init_from} holds a {type(model).__name__}")
    tokens = token_kind(start.config) if start else config.ip_tokens
    if start and config.ip_tokens != tokens:
        raise ValueError(f"--side-from {config.side_from} reads {tokens} image features; this run asks for "
                         f"ip_tokens={config.ip_tokens!r}")
    grid = tokens != "pooled"
    own_query = start.config.own_query if start else config.ip_query == "own"
    if start and config.ip_query != ("own" if own_query else "shared"):
        raise ValueError(f"--side-from {config.side_from} has {'its own' if own_query else 'the shared'} image query; "
                         f"this run asks for ip_query={config.ip_query!r}")
    name = start.config.image_encoder if start else SLOTS_ENCODER if tokens == "objects" else DEFAULT_IMAGE_ENCODER
    encoder = image_encoder(name, grid=grid)
    adapter = start or IPAdapter.from_unet(model, encoder.feature_dim, num_tokens=encoder.grid_tokens if grid else 4,
                                           image_encoder=name, grid=grid, own_query=own_query)
    return IPAdaptedUNet(model, adapter), encoder


def token_kind(config) -> str:
    """What an adapter (its :class:`~difflab.models.ip_adapter.IPAdapterConfig`) reads, as ``--ip-tokens`` names
    it: ``pooled``, ``grid`` (cells) or ``objects`` (the ``shapes-slots`` encoder's slots)."""
    return "pooled" if not config.grid else "objects" if config.image_encoder == SLOTS_ENCODER else "grid"


class ReferenceFeatures:
    """The image-prompt features of each training position, ``[D]`` or ``[cells, D]`` (zero where the image is
    dropped)."""

    def __init__(self, config, data, encoder):
        self.data, self.encoder, self.config = data, encoder, config
        self._cache: dict[tuple[int, bool], torch.Tensor] = {}

    def choice(self, position: int) -> tuple[int, bool, bool]:
        """(item index, image dropped, image prompt = the training image itself) of ``position``."""
        draw = random.Random(f"difflab-ip-drop-{self.config.seed}-{position}")
        dropped = draw.random() < IMAGE_DROPOUT
        return self.data.item_index(position), dropped, draw.random() < self.config.ip_same_image

    def item(self, position: int) -> torch.Tensor:
        index, dropped, same = self.choice(position)
        if (index, same) not in self._cache:
            self._cache[index, same] = self.encoder(self.image(index, same))[0]
        return torch.zeros_like(self._cache[index, same]) if dropped else self._cache[index, same]

    def image(self, index: int, same: bool):
        """Item ``index``'s image prompt: the training image itself (``same``) or another render of it."""
        item = self.data.dataset[index]
        return item["image"] if same else reference_image(item, self.config.resolution, self.config.seed, index)

    def batch(self, positions: list[int]) -> torch.Tensor:
        return torch.stack([self.item(p) for p in positions])

    def images(self, positions: list[int]) -> list:
        """The image prompts themselves (for preview grids)."""
        return [self.image(index, same) for index, _, same in map(self.choice, positions)]


class SceneTeacher:
    """``--ip-teacher``: the adapter's target is the frozen model's own prediction for the scene *in words*,
    a lower-variance target than the training image's (a distillation of the model's text conditioning into
    the image branch). At ``(x_t, t)`` of a sample whose image prompt is kept, the target is the UNet's output
    for the item's pinned prompt (:func:`~difflab.train.ip_pairs.pinned_prompt`: its caption with every
    colour and the background fixed, what the reference shows); where the image is dropped, for the
    sample's own (possibly dropped) text, so no image means the model as it is. The denoising loss has
    the same minimiser in the limit (the image determines the pinned prompt); the teacher removes the
    noise of one training image per sample from the target."""

    def __init__(self, unet, conditioner, references: ReferenceFeatures):
        self.unet, self.conditioner, self.references = unet, conditioner, references

    def prompts(self, positions: list[int], conditions: list) -> list:
        """The teacher's text for each sample: its pinned prompt, or its own text where the image is dropped."""
        chosen = [self.references.choice(p) for p in positions]
        return [own if dropped else pinned_prompt(self.references.data.dataset[index])
                for (index, dropped, _), own in zip(chosen, conditions)]

    @torch.no_grad()
    def __call__(self, x_in: torch.Tensor, t: torch.Tensor, positions: list[int], conditions: list) -> torch.Tensor:
        return self.unet(x_in, t, **self.conditioner(self.prompts(positions, conditions), x_in.device))
