"""scikit-learn's bundled handwritten digits (1797 images of 8x8, 10 classes), upsampled.

The data ships inside scikit-learn (``sklearn.datasets.load_digits``, the UCI optical recognition
set of Alpaydin and Kaynak, 1998), so nothing is downloaded. Pixels are ink intensities 0..16; they
become white ink on black, bicubically upsampled to ``resolution``. The split is fixed and stratified:
80% train, 10% val, 10% test of every class.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test", "all")
SPLIT_SEED = 0
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images * (255 / 16)).round().astype(np.uint8), bunch.target.astype(np.int64)


@lru_cache(maxsize=4)
def split_indices(split: str) -> np.ndarray:
    """Indices of a split: per class, a fixed shuffle cut 80 / 10 / 10."""
    _, labels = _load()
    if split == "all":
        return np.arange(len(labels))
    rng = np.random.default_rng(SPLIT_SEED)
    chosen = []
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        cut = (int(0.8 * len(members)), int(0.9 * len(members)))
        chosen.append({"train": members[: cut[0]], "val": members[cut[0]: cut[1]], "test": members[cut[1]:]}[split])
    return np.sort(np.concatenate(chosen))


class DigitsDataset:
    """Items are ``{"image": PIL "L" image, "caption": "the digit three", "label": 3}``."""

    channels = 1                  # grey images
    num_classes = 10              # items carry "label" in 0..9

    def __init__(self, split: str = "train", resolution: int = 32):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if not isinstance(resolution, int) or resolution < 8:
            raise ValueError(f"resolution must be an integer >= 8, got {resolution!r}")
        self.split, self.resolution = split, resolution
        self.indices = split_indices(split)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        if not isinstance(index, (int, np.integer)) or not 0 <= index < len(self):
            raise IndexError(f"index must be in [0, {len(self)}), got {index!r}")
        images, labels = _load()
        k = self.indices[index]
        image = Image.fromarray(images[k]).resize((self.resolution,) * 2, Image.Resampling.BICUBIC)
        label = int(labels[k])
        return {"image": image, "caption": f"the digit {NUMBER_WORDS[label]}", "label": label}
