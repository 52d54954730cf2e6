"""Reflow's couplings: pairs (z, x1) of a noise and the teacher's sample from it (Liu et al. 2022, Alg. 1).

Pair ``i`` is a pure function of the run: its caption is the training stream's position ``i``
(:class:`~difflab.train.batches.TrainingData`), its noise comes from the generator seeded by (run
seed, i), and x1 is the teacher's deterministic ODE solution from that noise with classifier-free
guidance, so every pair replays from its seed. Pairs are written in shards of ``SHARD`` to
``OUT/couplings/pairs-NNNNN.safetensors`` (z, x1 and the captions, with the recipe that made them),
each atomically; an interrupted generation resumes at the first missing shard, and with several
processes (torchrun / accelerate launch) process r makes the shards r, r + N, ... A shard made by
another recipe is refused, never mixed in.

Since pair ``i`` does not depend on how many pairs are asked for, the count is not part of the recipe:
a run with a larger ``--couplings`` over the same folder keeps every full shard it finds and makes
the rest (a last shard cut short by the smaller count is made again, whole).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from difflab.noise import stream_seed
from difflab.outputs import write_file

SHARD = 256


def coupling_noise(seed: int, index: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The unit Gaussian noise of pair ``index``."""
    generator = torch.Generator().manual_seed(stream_seed(seed, index, 17))
    return torch.randn(shape, generator=generator)


def _without_count(recipe: dict) -> dict:
    """A recipe as shards compare it: without the count (shards made before this rule carry one)."""
    return {k: v for k, v in recipe.items() if k != "count"}


class Couplings:
    """``count`` pairs in ``folder``; ``recipe``: what makes them (teacher, guidance, steps, seed)."""

    def __init__(self, folder: Path, count: int, recipe: dict):
        self.folder, self.count, self.recipe = Path(folder), count, recipe
        self._z = self._x1 = None
        self._captions: list = []

    def shard_path(self, shard: int) -> Path:
        return self.folder / f"pairs-{shard:05d}.safetensors"

    @property
    def shards(self) -> int:
        return -(-self.count // SHARD)

    def size(self, shard: int) -> int:
        """How many pairs shard ``shard`` holds at this count."""
        return min(self.count, (shard + 1) * SHARD) - shard * SHARD

    def missing(self) -> list[int]:
        """Shards not on disk, or on disk with fewer pairs than this count puts in them."""
        from safetensors import safe_open

        def whole(shard: int) -> bool:
            if not self.shard_path(shard).is_file():
                return False
            with safe_open(str(self.shard_path(shard)), "pt") as f:
                return f.get_slice("z").get_shape()[0] == self.size(shard)
        return [s for s in range(self.shards) if not whole(s)]

    def generate(self, solve, data, process_index: int = 0, num_processes: int = 1, log=print,
                 shape: tuple[int, ...] | None = None) -> None:
        """Make this process's missing shards. ``solve(z, captions) -> x1`` is the guided teacher ODE;
        ``data.item(i)`` gives pair i's (image, caption); ``shape``: the noise's, when the teacher works
        on something else than the images (a latent teacher: its VAE's latent shape)."""
        from safetensors.torch import save

        from tqdm.auto import tqdm
        missing = self.missing()
        mine = [s for s in missing if s % num_processes == process_index]
        if not mine:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        found = self.count - sum(self.size(s) for s in missing)
        log(f"generating {sum(self.size(s) for s in mine)} teacher couplings in {len(mine)} shard(s) of {SHARD}"
            + (f"; {found} found in {self.folder} are kept" if found else ""))
        bar = tqdm(total=len(mine), unit="shard", disable=process_index != 0, desc="couplings")
        for shard in mine:
            indices = range(shard * SHARD, min(self.count, (shard + 1) * SHARD))
            captions = [data.item(i)[1] for i in indices]
            z = torch.stack([coupling_noise(self.recipe["seed"], i, shape or tuple(data.item(i)[0].shape))
                             for i in indices])
            x1 = solve(z, captions).float().cpu().contiguous()
            payload = save({"z": z.contiguous(), "x1": x1},
                           metadata={"captions": json.dumps(captions),
                                     "recipe": json.dumps(_without_count(self.recipe), sort_keys=True)})
            # overwrite: the one file here is a shard cut short by a smaller count (an atomic rename, so a
            # hard-linked copy of it in another run's folder keeps its own)
            write_file(self.shard_path(shard), lambda f: f.write(payload), overwrite=True)
            bar.update(1)
        bar.close()

    def load(self) -> None:
        """Read every shard (checked against the recipe) into memory."""
        from safetensors import safe_open
        missing = self.missing()   # each call opens every shard's header
        if missing:
            raise ValueError(f"{self.folder}: shards {missing[:5]} of the couplings are missing")
        zs, x1s, self._captions = [], [], []
        want = json.dumps(_without_count(self.recipe), sort_keys=True)
        for shard in range(self.shards):
            with safe_open(str(self.shard_path(shard)), "pt") as f:
                meta = f.metadata() or {}
                if json.dumps(_without_count(json.loads(meta.get("recipe") or "{}")), sort_keys=True) != want:
                    raise ValueError(f"{self.shard_path(shard)} was made by another recipe ({meta.get('recipe')}); "
                                     f"this run's is {want}: use a new --out")
                zs.append(f.get_tensor("z"))
                x1s.append(f.get_tensor("x1"))
                self._captions += json.loads(meta["captions"])
        self._z, self._x1 = torch.cat(zs), torch.cat(x1s)

    def __len__(self) -> int:
        return self.count

    def pair(self, index: int) -> tuple[torch.Tensor, torch.Tensor, object]:
        """(z, x1, caption) of pair ``index``."""
        if self._z is None:
            self.load()
        return self._z[index], self._x1[index], self._captions[index]
