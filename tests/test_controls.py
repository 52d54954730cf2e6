"""ControlNet controls: layout maps match the renderer's coverage, Canny edges, layout IoU, control_image."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from difflab.data.controls import CONTROL_KINDS, control_image, edge_map, layout_map
from difflab.metrics.layout import control_masks, layout_iou, output_masks
from difflab.data.shapes import EXTENT, Scene, ShapeObject, render_scene, scene_for
from difflab.data.shapes_grammar import BACKGROUNDS, PALETTE, SHAPES

PROMPTS = ("a red circle", "two blue squares", "three small green crosses", "a yellow triangle above a purple cross",
           "a small orange circle and a large green triangle")


def _unmix(render: Image.Image, background: str, colour: str) -> np.ndarray:
    """Coverage of a one-object render by projection on its mixing line p = B + f (C - B)."""
    b, c = np.array(BACKGROUNDS[background], float), np.array(PALETTE[colour], float)
    return (np.asarray(render, float) - b) @ (c - b) / ((c - b) @ (c - b))


@pytest.mark.parametrize("background", tuple(BACKGROUNDS))
@pytest.mark.parametrize("shape", SHAPES)
def test_layout_map_is_the_render_coverage(shape, background):
    b, c = np.array(BACKGROUNDS[background], float), np.array(PALETTE["purple"], float)
    # PIL's fixed-point box filter lands within one 8-bit level of the exact area average, in the map and in
    # each channel of the render (that level, projected on the mixing line)
    tolerance = np.abs(c - b).sum() / ((c - b) @ (c - b)) + 1 / 255
    for resolution in (32, 64):
        scene = Scene((ShapeObject(shape, "purple", "large", (1, 0), (0.013, -0.021)),), background, "")
        coverage = _unmix(render_scene(scene, resolution), background, "purple")
        layout = np.asarray(layout_map(scene, resolution), float) / 255
        assert layout.shape == (resolution, resolution, 3) and np.ptp(layout, axis=2).max() == 0  # gray RGB
        assert np.abs(layout[..., 0] - coverage).max() <= tolerance
        assert layout.min() == 0.0 and layout.max() == 1.0  # black background, white interior


@pytest.mark.parametrize("background", tuple(BACKGROUNDS))
def test_render_follows_its_own_layout(background):
    for prompt in PROMPTS:
        for seed in range(3):
            scene = scene_for(f"{prompt} on a {background} background", seed)
            for resolution in (32, 64):
                result = layout_iou(render_scene(scene, resolution), layout_map(scene, resolution))
                assert result["mean_iou"] >= 0.97, (prompt, seed, resolution, result)
                assert result["extra"] == 0 and len(result["ious"]) == len(scene.objects)


def test_control_masks_are_one_coverage_map_per_object():
    scene = scene_for("three small green crosses", 1)
    control = layout_map(scene, 64)
    masks = control_masks(control)
    assert len(masks) == 3
    total = np.asarray(control, float)[..., 0] / 255
    areas = [mask.sum() for mask in masks]
    assert all(0.0 <= mask.min() and mask.max() <= 1.0 for mask in masks)
    ideal = 5 / 9 * (EXTENT["small"] * 64) ** 2  # a small cross covers 5/9 of its box, 0.16 image sides wide
    assert ideal <= min(areas) and max(areas) <= 1.15 * ideal  # PIL also fills the outline's boundary pixels
    assert sum(m.sum() for m in masks) == pytest.approx(total.sum(), rel=0.01)
    assert np.sum([m > 0 for m in masks], axis=0).max() == 1  # no pixel shared


def test_shifted_output_scores_low():
    cases = (("a red circle", 0), ("two blue squares", 2), ("a large green cross on a black background", 1))
    for prompt, seed in cases:
        scene = scene_for(prompt, seed)
        render, control = render_scene(scene), layout_map(scene)
        assert layout_iou(render, control)["mean_iou"] >= 0.97
        shifted = np.roll(np.asarray(render), 2, axis=1)
        assert layout_iou(shifted, control)["mean_iou"] < 0.75


def test_extra_object_is_penalised():
    scene = scene_for("a red circle and a blue square", 3)
    render = render_scene(scene)
    full = layout_iou(render, layout_map(scene))
    fewer = layout_iou(render, layout_map(dataclasses.replace(scene, objects=scene.objects[:1])))
    assert fewer["extra"] == 1 and len(fewer["ious"]) == 1 and fewer["ious"][0] >= 0.97
    assert fewer["mean_iou"] == pytest.approx(fewer["ious"][0] / 2)
    assert fewer["mean_iou"] < full["mean_iou"] - 0.4
    missing = layout_iou(render_scene(dataclasses.replace(scene, objects=scene.objects[:1])), layout_map(scene))
    assert missing["extra"] == 0 and sorted(missing["ious"])[0] == 0.0 and missing["mean_iou"] < 0.5


def test_layout_iou_edge_cases():
    control = layout_map(scene_for("a red circle", 0))
    assert layout_iou(Image.new("RGB", (32, 32), (128, 128, 128)), control) == {"mean_iou": 0.0, "ious": [0.0],
                                                                                 "extra": 0}
    assert output_masks(Image.new("RGB", (32, 32), (255, 255, 255))) == []
    with pytest.raises(ValueError, match="no objects"):
        layout_iou(render_scene(scene_for("a red circle", 0)), Image.new("RGB", (32, 32)))
    with pytest.raises(ValueError, match="same size"):
        layout_iou(render_scene(scene_for("a red circle", 0), 64), control)


@pytest.mark.parametrize("resolution", (32, 64))
@pytest.mark.parametrize("background, colour", (("white", "red"), ("black", "yellow"), ("gray", "blue")))
def test_edge_map_traces_a_square(resolution, background, colour):
    scene = Scene((ShapeObject("square", colour, "large", (1, 1)),), background, "")
    edges = edge_map(render_scene(scene, resolution))
    assert edges.mode == "RGB" and edges.size == (resolution, resolution)
    array = np.asarray(edges)
    assert set(np.unique(array)) <= {0, 255} and (array == array[..., :1]).all()
    on = array[..., 0] == 255
    half = EXTENT["large"] * resolution / 2
    low, high = resolution / 2 - half, resolution / 2 + half
    centres = np.arange(resolution) + 0.5
    outside = np.maximum(low - centres, centres - high)  # per axis: > 0 outside the square's span
    distance = np.maximum(outside[None, :], outside[:, None])  # Chebyshev distance to the square's outline, signed
    assert not on[np.abs(distance) > 2.5].any()  # nothing deep inside or in the flat background
    middle = np.abs(centres - resolution / 2) < half - 2  # rows / columns away from the corners
    near = np.abs(distance) <= 1.5
    left = near & (centres < resolution / 2)[None, :] & middle[:, None]
    right = near & (centres > resolution / 2)[None, :] & middle[:, None]
    top = near & (centres < resolution / 2)[:, None] & middle[None, :]
    bottom = near & (centres > resolution / 2)[:, None] & middle[None, :]
    assert (on & left).any(axis=1)[middle].all() and (on & right).any(axis=1)[middle].all()
    assert (on & top).any(axis=0)[middle].all() and (on & bottom).any(axis=0)[middle].all()
    band = (np.abs(distance) <= 2.5) & middle[:, None] & (centres < resolution / 2)[None, :]
    assert (on & band).sum(axis=1).max() <= 2  # non-maximum suppression thins the left side to 1-2 px


def test_edge_map_hysteresis_keeps_weak_edges_only_when_linked_to_strong_ones():
    image = np.zeros((64, 64, 3))
    image[32:] = np.interp(np.arange(64), (0, 32), (1.0, 0.14))[:, None]  # a step fading from strong to weak
    image[8:20, 10:26] = 0.14  # an isolated weak square (its steps lie between the two thresholds)
    on = np.asarray(edge_map(image))[..., 0] == 255
    assert on[30:34, 2:62].any(axis=0).all()  # the faded half survives through its strong half
    assert not on[:28].any()
    single = np.asarray(edge_map(image, low=0.1, high=0.1))[..., 0] == 255
    assert single[6:10, 12:24].any(axis=0).all() and single[10:18, 8:12].any(axis=1).all()


def test_edge_map_of_a_flat_image_is_black():
    for value in (0, 128, 255):
        assert not np.asarray(edge_map(Image.new("RGB", (32, 32), (value, value, 0)))).any()
    assert not np.asarray(edge_map(np.full((64, 64, 3), 0.3))).any()
    with pytest.raises(ValueError, match="low <= high"):
        edge_map(Image.new("RGB", (32, 32)), low=0.5, high=0.2)


def test_control_image():
    scene = scene_for("two blue squares", 0)
    image = render_scene(scene, 64)
    assert CONTROL_KINDS == ("layout", "edges")
    assert np.array_equal(np.asarray(control_image("layout", image, scene)), np.asarray(layout_map(scene, 64)))
    assert control_image("layout", image, scene, resolution=32).size == (32, 32)
    assert np.array_equal(np.asarray(control_image("edges", image)), np.asarray(edge_map(image)))
    assert control_image("edges", image, resolution=32).size == (32, 32)
    with pytest.raises(ValueError, match=r"control kind must be one of \('layout', 'edges'\), got 'depth'"):
        control_image("depth", image, scene)
    message = "layout controls need the shapes world's scene; a folder of images takes edges"
    with pytest.raises(ValueError, match=message):
        control_image("layout", image)
