"""Control images for ControlNet (Zhang et al., "Adding Conditional Control to Text-to-Image Diffusion
Models", ICCV 2023), computed from the training images (how well an output follows a layout:
:func:`difflab.metrics.layout.layout_iou`).

- ``layout``: the shapes world's object silhouettes, white on black, drawn with the renderer's own
  polygons and supersampling, so a silhouette's anti-aliased edge is the render's coverage.
- ``edges``: Canny edges (Canny, "A Computational Approach to Edge Detection", TPAMI 1986) of any image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from difflab.data.shapes import EXTENT, shape_polygons, supersample_factor
from difflab.data.images import to_array

CONTROL_KINDS = ("layout", "edges")
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 weights, as PIL's "L" conversion
FLAT_GRADIENT = 1e-6  # a largest gradient below this (luminance per pixel) means a flat image: no edges


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Luma Y = 0.299 R + 0.587 G + 0.114 B of an H x W x 3 float image."""
    return rgb @ LUMA


def layout_map(scene, resolution: int = 32) -> Image.Image:
    """The scene's objects filled white on black, drawn as ``render_scene`` draws them.

    The same polygons are filled at the same supersampled size and box-filtered down, so each pixel is
    the area fraction the object covers (Crow 1977), exactly the mixing weight of the render.
    """
    if not isinstance(resolution, int) or resolution < 16:
        raise ValueError(f"resolution must be an integer >= 16, got {resolution!r}")
    big = resolution * supersample_factor(resolution)
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        cx, cy = obj.centre
        for polygon in shape_polygons(obj.shape, cx * big, cy * big, EXTENT[obj.size] * big):
            draw.polygon(polygon, fill=255)
    return canvas.resize((resolution, resolution), Image.Resampling.BOX).convert("RGB")


def _non_maximum_suppression(magnitude: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Keep a gradient only where it is a local maximum along its direction, quantised to 0/45/90/135 degrees."""
    sector = np.round(np.degrees(np.arctan2(gy, gx)) / 45).astype(int) % 4
    steps = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}  # (row, column) step along the gradient; rows point down
    padded = np.pad(magnitude, 1)
    h, w = magnitude.shape
    keep = np.zeros(magnitude.shape, dtype=bool)
    for k, (dy, dx) in steps.items():
        ahead = padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        behind = padded[1 - dy:1 - dy + h, 1 - dx:1 - dx + w]
        keep |= (sector == k) & (magnitude >= ahead) & (magnitude >= behind)
    return np.where(keep, magnitude, 0.0)


def _hysteresis(thin: np.ndarray, low: float, high: float) -> np.ndarray:
    """Weak edges (>= low) survive when their 8-connected chain holds a strong one (>= high)."""
    weak = (thin > 0) & (thin >= low)
    labels, n = ndimage.label(weak, structure=np.ones((3, 3)))
    touches_strong = np.zeros(n + 1, dtype=bool)
    touches_strong[labels[weak & (thin >= high)]] = True
    touches_strong[0] = False
    return touches_strong[labels]


def edge_map(image, sigma: float = 1.0, low: float = 0.1, high: float = 0.2) -> Image.Image:
    """Canny (1986) edges, white on black, same size: Gaussian smoothing, Sobel gradients of the luminance,
    non-maximum suppression, double threshold with hysteresis.

    ``low`` and ``high`` are fractions of the largest gradient, so the map does not depend on contrast;
    a flat image has no largest gradient and gives an all-black map.
    """
    if not sigma > 0 or not 0 <= low <= high <= 1:
        raise ValueError(f"edge_map needs sigma > 0 and 0 <= low <= high <= 1, got sigma={sigma!r}, "
                         f"low={low!r}, high={high!r}")
    smooth = ndimage.gaussian_filter(luminance(to_array(image)), sigma, mode="nearest")
    gx = ndimage.sobel(smooth, axis=1, mode="nearest")
    gy = ndimage.sobel(smooth, axis=0, mode="nearest")
    magnitude = np.hypot(gx, gy)
    peak = magnitude.max()
    edges = np.zeros(magnitude.shape, dtype=bool)
    if peak >= FLAT_GRADIENT:
        edges = _hysteresis(_non_maximum_suppression(magnitude, gx, gy), low * peak, high * peak)
    return Image.fromarray(np.repeat(edges[..., None], 3, axis=2).astype(np.uint8) * 255, "RGB")


def control_image(kind: str, image, scene=None, resolution: int | None = None) -> Image.Image:
    """The ``kind`` control of one training item; ``resolution`` defaults to the image's width.

    ``layout`` draws the item's scene; ``edges`` detects the image's edges (resized first when
    ``resolution`` differs from its size).
    """
    if kind not in CONTROL_KINDS:
        raise ValueError(f"control kind must be one of {CONTROL_KINDS}, got {kind!r}")
    if kind == "layout":
        if scene is None:
            raise ValueError("layout controls need the shapes world's scene; a folder of images takes edges")
        side = resolution if resolution is not None else (to_array(image).shape[1] if image is not None else 32)
        return layout_map(scene, side)
    if image is None:
        raise ValueError("edge controls are computed from the training image; got image=None")
    if resolution is not None:
        image = Image.fromarray(np.round(to_array(image) * 255).astype(np.uint8), "RGB")
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return edge_map(image)
