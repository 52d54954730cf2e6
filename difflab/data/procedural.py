"""What the procedural worlds (shapes, moving shapes, sounds) share: fixed splits drawn from seed streams.

Item ``i`` of split ``s`` of world ``w`` is drawn from ``random.Random(f"difflab-{w}-{s}-{i}")``: a
prompt, then what realises it (a scene, a clip, a sound), redrawn while a train item touches a
held-out combination; train captions are paraphrases, val and test captions the canonical prompts
the judges parse. Each split has its own stream, so no item is shared, and every run sees the same data.
"""

from __future__ import annotations

import random
from collections.abc import Callable

SPLITS = ("train", "val", "test")
SPLIT_LENGTHS = {"train": 100_000, "val": 1_000, "test": 1_000}


class ProceduralSplit:
    """Base of a procedural world's dataset; a subclass sets ``world`` (its seed streams' name)."""

    world: str

    def init_split(self, split: str, length: int | None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < 1):
            raise ValueError(f"length must be a positive integer or None, got {length!r}")
        self.split, self.length = split, length or SPLIT_LENGTHS[split]

    def __len__(self) -> int:
        return self.length

    def draw(self, index: int, sample_prompt: Callable, realize: Callable, held_out: Callable,
             paraphrase: Callable) -> tuple[object, str]:
        """Item ``index``'s realisation (``realize(prompt, rng)``, which has a ``prompt``) and caption."""
        if not isinstance(index, int) or not 0 <= index < self.length:
            raise IndexError(f"index must be in [0, {self.length}), got {index!r}")
        rng = random.Random(f"difflab-{self.world}-{self.split}-{index}")
        while True:
            prompt = sample_prompt(rng)
            thing = realize(prompt, rng)
            if self.split != "train" or not held_out(thing, prompt):
                break
        return thing, paraphrase(prompt, rng) if self.split == "train" else thing.prompt
