"""How well a generated image follows a layout control (ControlNet, :mod:`difflab.data.controls`):
``layout_iou`` compares the objects' soft coverage in the output with the silhouettes in the map.
"""

from __future__ import annotations

import numpy as np

from difflab.data.controls import luminance
from difflab.data.images import to_array
from difflab.metrics.detect import SEED_DISTANCE, background_colour, owners

CORE_FRACTION = 0.2  # an output object's colour is the mean of its pixels this far up in distance from the background


def control_masks(control) -> list[np.ndarray]:
    """The objects of a layout map as coverage maps in [0, 1]: one per 4-connected component of pixels
    brighter than one half, holding the luminance of the pixels within 1 px of it (anti-aliased edges count
    fractionally)."""
    lum = luminance(to_array(control))
    labels, n = owners(lum > 0.5, 1.0)
    return [np.where(labels == k, lum, 0.0) for k in range(1, n + 1)]


def output_masks(image) -> list[np.ndarray]:
    """The objects of a generated image as soft coverage: per pixel, its distance from the background
    colour over the object's core distance, clipped to [0, 1].

    Objects are 4-connected components of pixels further than ``SEED_DISTANCE`` from the background,
    extended by 1 px; an object's core is the mean of its ``CORE_FRACTION`` of pixels furthest from it.
    """
    rgb = to_array(image)
    bg = background_colour(rgb)
    distance = np.linalg.norm(rgb - bg, axis=2)
    seeds = distance > SEED_DISTANCE
    labels, n = owners(seeds, 1.0)
    masks = []
    for k in range(1, n + 1):
        pixels = rgb[seeds & (labels == k)]
        furthest_first = np.argsort(np.linalg.norm(pixels - bg, axis=1))[::-1]
        core = pixels[furthest_first[:max(1, int(np.ceil(CORE_FRACTION * len(pixels))))]].mean(axis=0)
        core_distance = np.linalg.norm(core - bg)
        masks.append(np.where(labels == k, np.clip(distance / core_distance, 0.0, 1.0), 0.0))
    return masks


def soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Soft (fuzzy) IoU of two coverage maps: sum min(a, b) / sum max(a, b)."""
    union = np.maximum(a, b).sum()
    return float(np.minimum(a, b).sum() / union) if union > 0 else 0.0


def layout_iou(output_image, control) -> dict:
    """How well an output follows a layout control: soft IoU per control object, matched greedily.

    Pairs are matched in order of decreasing IoU, each output object at most once. ``mean_iou`` averages
    the control objects' IoUs (0 when unmatched) together with a 0 for each unmatched output object
    (``extra``), so both missing and surplus objects lower it.
    """
    output, control = to_array(output_image), to_array(control)
    if output.shape != control.shape:
        raise ValueError(f"output and control must have the same size, got {output.shape[:2]} and "
                         f"{control.shape[:2]}")
    targets = control_masks(control)
    if not targets:
        raise ValueError("the layout control holds no objects: it needs at least one white silhouette")
    found = output_masks(output)
    pairs = sorted(((soft_iou(t, f), i, j) for i, t in enumerate(targets) for j, f in enumerate(found)), reverse=True)
    ious, used = [0.0] * len(targets), set()
    for iou, i, j in pairs:
        if iou > 0 and ious[i] == 0.0 and j not in used:
            ious[i] = iou
            used.add(j)
    extra = len(found) - len(used)
    return {"mean_iou": sum(ious) / (len(targets) + extra), "ious": ious, "extra": extra}
