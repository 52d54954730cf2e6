"""Per-sample noise streams: a batch of N images equals N single runs with the same seeds.

Every sample owns a seed. Its initial noise and the noise of every stochastic step are drawn from a
CPU generator seeded by a hash of (seed, step, sub-draw), so a draw depends on nothing but the
sample's seed and where in the run it is made: not on the batch size, the position in the batch,
the device, or how many draws came before it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_MASK64 = (1 << 64) - 1
_INITIAL_STEP = -1


def _splitmix64(z: int) -> int:
    """One round of SplitMix64 (Steele et al. 2014), a strong 64-bit integer mix."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def stream_seed(seed: int, step: int, sub: int = 0) -> int:
    """Generator seed of one draw: a hash of (seed, step, sub)."""
    h = _splitmix64(seed & _MASK64)
    h = _splitmix64(h ^ (step & _MASK64))
    return _splitmix64(h ^ (sub & _MASK64)) >> 1


def validate_seeds(seeds) -> list[int]:
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or len(seeds) == 0:
        raise ValueError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ValueError(f"each seed must be an integer in [0, 2**63), got {seed!r}")
    return list(seeds)


class NoiseStreams:
    """Seeded noise, one stream per sample. Called as ``noise(like, step, sub=0)`` by samplers."""

    def __init__(self, seeds: Sequence[int]):
        self.seeds = validate_seeds(seeds)

    def __len__(self) -> int:
        return len(self.seeds)

    def __repr__(self) -> str:
        return f"NoiseStreams(seeds={self.seeds})"

    def initial(self, shape: Sequence[int], dtype=torch.float32, device=None) -> torch.Tensor:
        """Unit Gaussian noise of ``shape`` (batch first, batch == number of seeds)."""
        return self._draw(tuple(shape), _INITIAL_STEP, 0, dtype, device)

    def __call__(self, like: torch.Tensor, step: int, sub: int = 0) -> torch.Tensor:
        """Unit Gaussian noise shaped like ``like`` for sampler step ``step`` (and sub-draw ``sub``)."""
        return self._draw(tuple(like.shape), step, sub, like.dtype, like.device)

    def _draw(self, shape, step, sub, dtype, device) -> torch.Tensor:
        if shape[0] != len(self.seeds):
            raise ValueError(f"batch of {shape[0]} does not match the {len(self.seeds)} seeds")
        generator = torch.Generator(device="cpu")
        draws = []
        for seed in self.seeds:
            generator.manual_seed(stream_seed(seed, step, sub))
            draws.append(torch.randn(shape[1:], generator=generator, dtype=torch.float32))
        return torch.stack(draws).to(device=device, dtype=dtype)


def global_noise(like: torch.Tensor, step: int, sub: int = 0) -> torch.Tensor:
    """Noise from torch's global generator: what samplers use when no streams are given."""
    return torch.randn_like(like)
