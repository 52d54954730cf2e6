"""Find the objects of a shapes-world image: segmentation, colour by hue, shape by template fit.

1. The background colour is the median of the image border.
2. Pixels far from it (RGB distance) are foreground; 4-connected components are objects.
3. Each object's colour is the hue of its core (the pixels furthest from the background). Hue
   is the right space here: an anti-aliased or blurred edge mixes the object with a white, black or
   gray background, and mixing with an achromatic colour leaves the hue unchanged.
4. Its soft coverage ``alpha`` unmixes each pixel along the background -> core colour line
   (p = B + alpha (C - B)), so area and centroid are sub-pixel exact and survive blur.
5. Its shape is the template (circle, square, triangle, cross) of the same area and centroid whose
   coverage differs least from ``alpha`` (L1); its size class comes from that template's extent.
6. ``scan`` also reports what the objects do not explain: pixels that are neither near the background
   nor near the mixing line of the object that owns them, and how much adjacent pixels differ. The
   oracle's validity gate (``difflab.metrics.adherence.scene_validity``) refuses noise with them.
"""

from __future__ import annotations

import colorsys
import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from difflab.data.images import to_array  # noqa: F401  (read here by the oracle and its users)
from difflab.data.shapes import CROSS_ARM, EXTENT, TRIANGLE_CENTROID_DROP
from difflab.data.shapes_grammar import COLOURS, PALETTE, SHAPES

SEED_DISTANCE = 0.2  # RGB distance (channels in [0, 1]) that marks a pixel as surely foreground
MIN_AREA = 0.25 * 0.5 * EXTENT["small"] ** 2  # a quarter of the smallest object (small triangle), in image areas
MIN_SATURATION = 0.25  # below this an object's core is achromatic and has no colour name
SIZE_THRESHOLD = (EXTENT["small"] * EXTENT["large"]) ** 0.5  # geometric mean of the two extents
AREA_FRACTION = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5, "cross": 1 - 4 * ((1 - CROSS_ARM) / 2) ** 2}
TRAINED = tuple(COLOURS)  # the colour names the oracle tells apart unless taught more (``PALETTE``)
TEMPLATE_SUPERSAMPLE = 6
BLUR_WIDTHS = (0.0, 0.4, 0.8, 1.2)  # template blur (Gaussian sigma) in pixels of a 32 x 32 image
PALETTE_RESIDUAL = 0.08  # how far (RGB distance) a core may sit off the background-palette line
EXPLAINED_DISTANCE = 0.15  # a pixel this close to the background or to an object's mixing line is explained


@dataclass(frozen=True)
class Detection:
    """One object found in an image; coordinates in image sides (0..1), origin top left."""

    colour: str | None
    shape: str
    size: str
    x: float
    y: float
    area: float
    hue: float
    shape_error: float

    @property
    def cell(self) -> tuple[int, int]:
        return min(int(self.y * 3), 2), min(int(self.x * 3), 2)


def background_colour(rgb: np.ndarray) -> np.ndarray:
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return np.median(border, axis=0)


@functools.lru_cache(maxsize=32)
def palette_hues(colours: tuple[str, ...] = TRAINED) -> dict[str, float]:
    """Hue in degrees of each named colour; a name outside ``PALETTE`` is an error."""
    unknown = [c for c in colours if c not in PALETTE]
    if unknown or not colours:
        raise ValueError(f"oracle colours must be names from {', '.join(PALETTE)}, got {list(colours)!r}")
    return {name: colorsys.rgb_to_hsv(*(c / 255 for c in PALETTE[name]))[0] * 360 for name in colours}


def hue_name(rgb: np.ndarray, colours: tuple[str, ...] = TRAINED) -> tuple[str | None, float]:
    """The name among ``colours`` whose hue is nearest (circular distance), or None for an achromatic colour."""
    h, s, v = colorsys.rgb_to_hsv(*np.clip(rgb, 0, 1))
    hue = h * 360
    if s < MIN_SATURATION or v < 0.2:
        return None, hue
    hues = palette_hues(colours)
    nearest = min(hues, key=lambda name: min(abs(hue - hues[name]), 360 - abs(hue - hues[name])))
    return nearest, hue


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of points (u, v) in the unit-extent shape centred at 0 (v down)."""
    h = 0.5
    if shape == "circle":
        return u ** 2 + v ** 2 <= h ** 2
    if shape == "square":
        return (np.abs(u) <= h) & (np.abs(v) <= h)
    if shape == "triangle":  # apex (0, -h), base corners (+-h, h): |u| <= (v + h) / 2
        return (v <= h) & (np.abs(u) <= (v + h) / 2)
    a = h * CROSS_ARM
    return ((np.abs(u) <= h) & (np.abs(v) <= a)) | ((np.abs(u) <= a) & (np.abs(v) <= h))


def template(shape: str, extent: float, cx: float, cy: float, ys: slice, xs: slice) -> np.ndarray:
    """Coverage of ``shape`` (extent in pixels, centroid at pixel coords cx, cy) over a pixel window."""
    s = TEMPLATE_SUPERSAMPLE
    y = np.arange(ys.start, ys.stop, 1 / s) + 0.5 / s
    x = np.arange(xs.start, xs.stop, 1 / s) + 0.5 / s
    cy_box = cy - (TRIANGLE_CENTROID_DROP * extent if shape == "triangle" else 0.0)
    mask = _inside(shape, (x[None, :] - cx) / extent, (y[:, None] - cy_box) / extent)
    return mask.reshape(ys.stop - ys.start, s, xs.stop - xs.start, s).mean(axis=(1, 3))


def _fit_shape(alpha: np.ndarray, area: float, cx: float, cy: float) -> tuple[str, float, float]:
    """Best (shape, blur) template by L1 error relative to the area -> (shape, relative error, extent).

    Templates are blurred with a few Gaussian widths, so a softened image is compared with an equally
    soft template instead of with sharp corners it no longer has.
    """
    best, pixel = None, alpha.shape[1] / 32  # blur widths scale with the resolution
    for shape in SHAPES:
        extent = (area / AREA_FRACTION[shape]) ** 0.5
        half = int(np.ceil(extent + 2.5 * BLUR_WIDTHS[-1] * pixel)) + 1
        ys = slice(max(int(cy) - half, 0), min(int(cy) + half + 1, alpha.shape[0]))
        xs = slice(max(int(cx) - half, 0), min(int(cx) + half + 1, alpha.shape[1]))
        sharp = template(shape, extent, cx, cy, ys, xs)
        outside = area - alpha[ys, xs].sum()
        for width in BLUR_WIDTHS:
            soft = ndimage.gaussian_filter(sharp, width * pixel, mode="constant") if width else sharp
            error = (np.abs(alpha[ys, xs] - soft).sum() + abs(outside)) / area
            if best is None or error < best[1]:
                best = (shape, error, extent)
    return best


def object_colour(rgb: np.ndarray, bg: np.ndarray, core_mask: np.ndarray,
                  colours: tuple[str, ...] = TRAINED) -> np.ndarray:
    """The object's own colour: its palette colour when the core is a mix of it with the background.

    A blurred small object never reaches its full colour; if the core lies on the line from the
    background to the palette colour of its hue, that palette colour is the pure one. Otherwise (a
    model's own shade) the core itself is used.
    """
    distance = np.linalg.norm(rgb[core_mask] - bg, axis=1)
    core = rgb[core_mask][distance >= 0.8 * distance.max()].mean(axis=0)
    name, _ = hue_name(core, colours)
    if name is None:
        return core
    pure = np.array(PALETTE[name]) / 255 - bg
    mix = (core - bg) @ pure / (pure @ pure)
    residual = np.linalg.norm(core - bg - mix * pure)
    return bg + pure if 0.5 <= mix <= 1.1 and residual < PALETTE_RESIDUAL else core


def _measure(rgb: np.ndarray, colour: np.ndarray, alpha: np.ndarray, colours: tuple[str, ...]) -> Detection | None:
    """Centroid, shape and size of one object from its coverage map ``alpha``."""
    area = alpha.sum()
    side = rgb.shape[0] * rgb.shape[1]
    if area < MIN_AREA * side:
        return None
    ys, xs = np.indices(alpha.shape)
    cy, cx = (alpha * (ys + 0.5)).sum() / area, (alpha * (xs + 0.5)).sum() / area
    shape, error, extent = _fit_shape(alpha, area, cx, cy)
    name, hue = hue_name(colour, colours)
    size = "large" if extent / rgb.shape[1] >= SIZE_THRESHOLD else "small"
    return Detection(name, shape, size, cx / rgb.shape[1], cy / rgb.shape[0], area / side, hue, error)


def owners(seeds: np.ndarray, reach: float) -> tuple[np.ndarray, int]:
    """Label seed components and give every pixel within ``reach`` to its nearest component."""
    labels, n = ndimage.label(seeds)
    if n == 0:
        return labels, 0
    distance, (iy, ix) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    owners = labels[iy, ix]
    owners[distance > reach] = 0
    return owners, n


def _coverage(rgb: np.ndarray, bg: np.ndarray, colour: np.ndarray) -> np.ndarray:
    direction = colour - bg
    return np.clip(((rgb - bg) @ direction) / (direction @ direction), 0, 1)


@dataclass(frozen=True)
class Scan:
    """Everything ``scan`` measures: the objects, the background, and what the objects fail to explain.

    ``unexplained`` marks pixels that are neither background nor on the mixing line of a detected
    object (background -> its colour); ``roughness`` is the mean RGB distance between horizontally
    and vertically adjacent pixels (channels in [0, 1]). Both are small for a rendered scene: flat colours,
    anti-aliased edges that mix one object with the background, and nothing else.
    """

    detections: list[Detection]
    background: np.ndarray
    unexplained: np.ndarray
    roughness: float


def scan(image, colours: tuple[str, ...] = TRAINED) -> Scan:
    """All objects of an image, its background colour (RGB in [0, 1]) and how well they explain it.

    Objects are named by the nearest hue among ``colours`` (the six trained colours unless the
    oracle is taught more, e.g. ``tuple(PALETTE)``). Components of far-from-background pixels are unmixed into coverage, then split again where their
    coverage falls below one half, which separates neighbours that blur has joined.
    """
    rgb = to_array(image)
    colours = tuple(colours)
    palette_hues(colours)  # a bad name fails here, before any work
    bg = background_colour(rgb)
    reach = 2.5 * rgb.shape[1] / 32
    off_background = np.linalg.norm(rgb - bg, axis=2)
    first, n = owners(off_background > SEED_DISTANCE, reach)
    detections = []
    explained = off_background <= EXPLAINED_DISTANCE
    for k in range(1, n + 1):
        seeds = (first == k) & (off_background > SEED_DISTANCE)
        colour = object_colour(rgb, bg, seeds, colours)
        coverage = _coverage(rgb, bg, colour)
        alpha = coverage * (first == k)
        parts, m = owners(alpha > 0.5, reach)
        residual = np.linalg.norm(rgb - bg - coverage[..., None] * (colour - bg), axis=2)  # off the mixing line
        for j in range(1, m + 1):
            found = _measure(rgb, colour, alpha * (parts == j), colours)
            if found is not None:
                detections.append(found)
                explained |= (parts == j) & (residual <= EXPLAINED_DISTANCE)
    roughness = (np.linalg.norm(np.diff(rgb, axis=0), axis=2).mean()
                 + np.linalg.norm(np.diff(rgb, axis=1), axis=2).mean()) / 2
    return Scan(detections, bg, ~explained, float(roughness))


def detect(image, colours: tuple[str, ...] = TRAINED) -> tuple[list[Detection], np.ndarray]:
    """All objects of an image, and its background colour (RGB in [0, 1]); see ``scan``."""
    found = scan(image, colours)
    return found.detections, found.background
