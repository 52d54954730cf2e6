"""The call arguments of :class:`~difflab.pipelines.image.Pipeline` that need checking on their own:
lists of prompts, diffusers' argument names, given latents, image counts and seeds."""

from __future__ import annotations

import numbers
import secrets

import torch

from difflab import limits
from difflab.noise import validate_seeds

DIFFUSERS_NAMES = {"num_inference_steps": "steps", "num_images_per_prompt": "num_images", "generator": "seed"}


def as_list(value, name: str) -> list:
    values = [value] if isinstance(value, (str, bytes, bytearray, int)) and not isinstance(value, bool) else value
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{name} must be a string or a non-empty list of strings, got {value!r}"[:300])
    return list(values)


def from_diffusers_names(names: dict, steps, num_images, seed):
    """diffusers' argument names as difflab's; each may be given once, under one name."""
    unknown = sorted(set(names) - set(DIFFUSERS_NAMES))
    if unknown:
        raise TypeError(f"Pipeline.__call__() got unexpected keyword argument(s) {', '.join(unknown)}")
    ours = {"steps": steps, "num_images": num_images if num_images != 1 else None, "seed": seed}
    for theirs, name in DIFFUSERS_NAMES.items():
        if theirs in names and ours[name] is not None:
            raise ValueError(f"give {name} or {theirs}, not both")
    generator = names.get("generator")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        names["generator"] = int(torch.randint(0, 2**31, (1,), generator=generator))
    return (names.get("num_inference_steps", steps), names.get("num_images_per_prompt", num_images),
            names.get("generator", seed))


def check_latents(latents, shape) -> torch.Tensor | None:
    if latents is None:
        return None
    if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != tuple(shape):
        raise ValueError(f"latents must be a tensor of shape {tuple(shape)}, got "
                         f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}")
    if not latents.is_floating_point() or not torch.isfinite(latents).all():
        raise ValueError("latents must be finite floating-point values")
    return latents


def check_count(num_images, prompts: int) -> None:
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
    limits.check("images", prompts * num_images, f"images in one call ({prompts} prompt(s) x num_images {num_images})")


def image_seeds(seed, n: int) -> list[int]:
    """None: fresh random seeds (recorded in the recipes); int: seed, seed + 1, ...; list: one per image."""
    if seed is None:
        seed = secrets.randbelow(2**31)
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        seeds = [int(seed) + i for i in range(n)]
    elif isinstance(seed, (list, tuple)):
        seeds = list(seed)
        if len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for {n} images")
    else:
        raise ValueError(f"seed must be an integer in [0, 2**63) or a list of them (one per image), got "
                         f"{seed!r}"[:300])
    return validate_seeds(seeds)
