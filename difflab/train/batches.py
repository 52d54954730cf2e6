"""Training data as a deterministic stream: global sample position -> (image, conditioning).

Position p of the run reads dataset item ``perm_e[p mod N]`` with ``e = p // N`` and ``perm_e`` a
permutation seeded by (run seed, epoch), so the data order is a pure function of the position: a
resumed run continues exactly, and processes split a global batch without coordination.
"""

from __future__ import annotations

import torch

from difflab.data.items import as_float, item_tensor
from difflab.noise import stream_seed
from difflab.train.config import TrainConfig, build_dataset


class StreamOrder:
    """Position p -> item ``perm_e[p mod n]``, ``perm_e`` seeded by (seed, epoch e = p // n)."""

    def __init__(self, seed: int, n: int):
        self.seed, self.n, self._epoch, self._perm = seed, n, None, None

    def __call__(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch, 11))
            self._perm, self._epoch = torch.randperm(self.n, generator=generator), epoch
        return int(self._perm[offset])


class TrainingData:
    """Images and captions/labels for global sample positions, with an in-memory image cache.

    ``channels``, ``num_classes`` and ``media`` come from the dataset (its attributes of those names; a
    dataset without them holds RGB images and captions). ``class_conditional``: items are labelled classes.
    Items are cached as stored (video as uint8), converted to float per batch.
    """

    def __init__(self, config: TrainConfig, dataset=None):
        self.config = config
        self.dataset = dataset if dataset is not None else build_dataset(config)
        if len(self.dataset) == 0:
            raise ValueError(f"the {config.dataset} dataset has no images")
        self.channels = getattr(self.dataset, "channels", 3)
        self.num_classes = getattr(self.dataset, "num_classes", None)
        self.class_conditional = self.num_classes is not None
        self.media = getattr(self.dataset, "media", "image")    # image | video | audio
        self._cache: dict[int, tuple[torch.Tensor, object]] = {}
        self._order = StreamOrder(config.seed, len(self.dataset))

    def __len__(self) -> int:
        return len(self.dataset)

    def item_index(self, position: int) -> int:
        return self._order(position)

    def item(self, position: int) -> tuple[torch.Tensor, object]:
        index = self.item_index(position)
        if index not in self._cache:
            item = self.dataset[index]
            condition = item["label"] if self.class_conditional else item.get("caption", "")
            self._cache[index] = (item_tensor(item, self.channels, self.config.resolution), condition)
        return self._cache[index]

    def batch(self, positions: list[int]) -> tuple[torch.Tensor, list]:
        """Data-space tensors ``[B, C, H, W]`` (video ``[B, C, T, H, W]``, audio ``[B, 1, mels, frames]``)
        and their captions or labels."""
        items = [self.item(p) for p in positions]
        return as_float(torch.stack([x for x, _ in items])), [condition for _, condition in items]


class CoupledData:
    """Reflow's training stream over :class:`~difflab.train.couplings.Couplings`: position p reads
    pair ``perm_e[p mod N]``, as :class:`TrainingData` reads items."""

    def __init__(self, couplings, seed: int):
        self.couplings, self._order = couplings, StreamOrder(seed, len(couplings))

    def batch(self, positions: list[int]) -> tuple[torch.Tensor, list, torch.Tensor]:
        """(x1 [B, ...] teacher samples, their captions, z [B, ...] their noises)."""
        pairs = [self.couplings.pair(self._order(p)) for p in positions]
        return torch.stack([x1 for _, x1, _ in pairs]), [c for _, _, c in pairs], torch.stack([z for z, _, _ in pairs])
