"""How reliable is the oracle? Acceptance on real renders, rejection of corrupted prompts.

A real render of prompt P must be accepted (also after mild blur and noise); the same image checked
against P with one attribute changed (a colour, a shape, a cell, a count, a relation turned around)
must be rejected. ``oracle_rates`` measures both on the shapes test split with fixed seeds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageFilter

from difflab.data.shapes import CELLS, ShapesDataset
from difflab.data.shapes_grammar import COLOURS, SHAPES, ObjectSpec, Prompt, format_prompt, parse_prompt
from difflab.metrics.adherence import check

OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below",
            "below": "above"}


@dataclass(frozen=True)
class Degradation:
    """Mild damage: Gaussian blur (radius in pixels at 32x32, scaled with resolution) and Gaussian noise."""

    blur_radius: float = 0.6
    noise_std: float = 6 / 255


def degrade(image: Image.Image, seed: int, damage: Degradation = Degradation()) -> Image.Image:
    radius = damage.blur_radius * image.width / 32
    blurred = np.asarray(image.convert("RGB").filter(ImageFilter.GaussianBlur(radius)), dtype=np.float64) / 255
    noisy = blurred + np.random.default_rng(seed).normal(0.0, damage.noise_std, blurred.shape)
    return Image.fromarray((np.clip(noisy, 0, 1) * 255).round().astype(np.uint8))


def _with_object(p: Prompt, index: int, spec: ObjectSpec) -> Prompt:
    objects = list(p.objects)
    objects[index] = spec
    return replace(p, objects=tuple(objects))


def _could_be_same(a: ObjectSpec, b: ObjectSpec) -> bool:
    """Both specs may describe one kind of object (then a turned-around relation can still hold)."""
    return a.shape == b.shape and (a.colour == b.colour or None in (a.colour, b.colour))


def corrupt(prompt: str, attribute: str, rng: random.Random) -> str | None:
    """``prompt`` with one ``attribute`` changed (colour, shape, cell, count, relation); None if it has none."""
    p = parse_prompt(prompt)
    index = rng.randrange(len(p.objects))
    spec = p.objects[index]
    if attribute == "colour" and spec.colour:
        other = rng.choice([c for c in COLOURS if c != spec.colour])
        return format_prompt(_with_object(p, index, replace(spec, colour=other)))
    if attribute == "shape":
        other = rng.choice([s for s in SHAPES if s != spec.shape])
        return format_prompt(_with_object(p, index, replace(spec, shape=other)))
    if attribute == "cell" and spec.cell:
        other = rng.choice([c for c in CELLS if c != spec.cell])
        return format_prompt(_with_object(p, index, replace(spec, cell=other)))
    if attribute == "count" and p.kind == "count":
        return format_prompt(replace(p, count=5 - p.count))
    if attribute == "relation" and p.kind == "relation" and not _could_be_same(*p.objects):
        return format_prompt(replace(p, relation=OPPOSITE[p.relation]))
    return None


def oracle_rates(n: int = 300, resolution: int = 32, damage: Degradation = Degradation()) -> dict:
    """Acceptance (clean, degraded) and rejection per corrupted attribute over ``n`` test-split items."""
    data = ShapesDataset("test", resolution=resolution, length=n)
    accepted = {"clean": [], "degraded": []}
    rejected = {a: [] for a in ("colour", "shape", "cell", "count", "relation", "colour_degraded")}
    for i in range(n):
        item = data[i]
        damaged = degrade(item["image"], i, damage)
        accepted["clean"].append(check(item["image"], item["prompt"])["ok"])
        accepted["degraded"].append(check(damaged, item["prompt"])["ok"])
        rng = random.Random(i)
        for attribute, outcomes in rejected.items():
            wrong = corrupt(item["prompt"], attribute.removesuffix("_degraded"), rng)
            image = damaged if attribute.endswith("_degraded") else item["image"]
            if wrong is not None:
                outcomes.append(not check(image, wrong)["ok"])
    rate = {f"accept_{k}": float(np.mean(v)) for k, v in accepted.items()}
    rate.update({f"reject_{k}": float(np.mean(v)) for k, v in rejected.items() if v})
    rate.update({f"n_{k}": len(v) for k, v in {**accepted, **rejected}.items()})
    return rate
