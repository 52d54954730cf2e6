"""Training data as a deterministic stream: global sample position -> (image, conditioning).

Position p of the run reads dataset item ``perm_e[p mod N]`` with ``e = p // N`` and ``perm_e`` a
permutation seeded by (run seed, epoch), so the data order is a pure function of the position: a
resumed run continues exactly, and processes split a global batch without coordination.
"""

from __future__ import annotations

import numpy as np
import torch

from difflab.noise import stream_seed
from difflab.train.config import TrainConfig


def build_dataset(config: TrainConfig):
    if config.dataset == "shapes":
        from difflab.data.shapes import ShapesDataset
        return ShapesDataset("train", resolution=config.resolution)
    if config.dataset == "digits":
        from difflab.data.digits import DigitsDataset
        return DigitsDataset("train", resolution=config.resolution)
    from difflab.data.folder import FolderDataset
    return FolderDataset(config.data_dir, resolution=config.resolution)


def image_to_tensor(image, channels: int) -> torch.Tensor:
    """PIL image -> float tensor [C, H, W] in [-1, 1]."""
    image = image.convert("RGB" if channels == 3 else "L")
    array = np.asarray(image, dtype=np.uint8)
    tensor = torch.from_numpy(array.copy()).float().div(127.5).sub(1)
    return tensor.permute(2, 0, 1) if tensor.ndim == 3 else tensor[None]


class TrainingData:
    """Images and captions/labels for global sample positions, with an in-memory image cache."""

    def __init__(self, config: TrainConfig, dataset=None):
        self.config = config
        self.dataset = dataset if dataset is not None else build_dataset(config)
        if len(self.dataset) == 0:
            raise ValueError(f"the {config.dataset} dataset has no images")
        self.channels = 1 if config.dataset == "digits" else 3
        self.class_conditional = config.dataset == "digits"
        self._cache: dict[int, tuple[torch.Tensor, object]] = {}
        self._perm_epoch, self._perm = None, None

    def __len__(self) -> int:
        return len(self.dataset)

    def item_index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.dataset))
        if epoch != self._perm_epoch:
            generator = torch.Generator().manual_seed(stream_seed(self.config.seed, epoch, 11))
            self._perm, self._perm_epoch = torch.randperm(len(self.dataset), generator=generator), epoch
        return int(self._perm[offset])

    def item(self, position: int) -> tuple[torch.Tensor, object]:
        index = self.item_index(position)
        if index not in self._cache:
            item = self.dataset[index]
            image = item["image"]
            if image.size != (self.config.resolution, self.config.resolution):
                image = image.resize((self.config.resolution,) * 2)
            condition = item["label"] if self.class_conditional else item.get("caption", "")
            self._cache[index] = (image_to_tensor(image, self.channels), condition)
        return self._cache[index]

    def batch(self, positions: list[int]) -> tuple[torch.Tensor, list]:
        items = [self.item(p) for p in positions]
        return torch.stack([image for image, _ in items]), [condition for _, condition in items]
