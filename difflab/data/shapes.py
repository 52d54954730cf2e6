"""The shapes world: procedural captioned images, deterministic from a seed, at any resolution.

Every scene holds 1-3 flat objects (shape, colour, size, cell of a 3x3 grid) on a white, black or
gray background. Objects sit in distinct cells and keep a margin to the cell border, so they never
touch and an oracle can segment them. Drawing happens at ``SUPERSAMPLE`` times the resolution and is
box-filtered down, which gives exact area anti-aliasing (the supersampling of Crow, "The aliasing
problem in computer-generated shaded images", CACM 1977).

``render(prompt, seed)`` draws an image that satisfies a canonical prompt; ``ShapesDataset`` serves
``{"image", "caption", "prompt", "scene"}`` items for training and evaluation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from difflab.data.procedural import ProceduralSplit
from difflab.data.shapes_captions import paraphrase
from difflab.data.shapes_grammar import (BACKGROUNDS, COLOURS, PALETTE, POSITIONS, RELATIONS, SHAPES, SIZES,
                                         ObjectSpec, Prompt, format_prompt, parse_prompt)

# Object extent (bounding-box side) as a fraction of the image side; a grid cell is 1/3.
EXTENT = {"small": 0.16, "large": 0.26}
CELL_MARGIN = 0.025  # minimum gap between an object's box and its cell border, in image sides
TRIANGLE_CENTROID_DROP = 1 / 6  # an upward isosceles triangle's centroid lies 1/6 of its extent below the box centre
CROSS_ARM = 1 / 3  # arm width of a cross as a fraction of its extent
CELLS = tuple(POSITIONS.values())
HELD_OUT = (("green", "circle"), ("purple", "triangle"), ("orange", "square"), ("yellow", "cross"))
FORM_WEIGHTS = {"single": 0.3, "and": 0.2, "count": 0.2, "relation": 0.3}
# Forms a curriculum may add (never drawn by default): "pair", two objects with colours and no places ("X and Y",
# shapes-bench's two-object form); "bare", one object named by shape (and maybe size) alone, its single-object form.
EXTRA_FORMS = ("pair", "bare")
ALL_FORMS = (*FORM_WEIGHTS, *EXTRA_FORMS)
CAPTION_STYLES = ("paraphrase", "canonical")
AND_ORDERS = ("any", "reading")   # an unplaced pair's first-named object: anywhere, or first in reading order


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object; ``offset`` is its centre's shift from the cell centre, in image sides."""

    shape: str
    colour: str
    size: str
    cell: tuple[int, int]
    offset: tuple[float, float] = (0.0, 0.0)

    @property
    def centre(self) -> tuple[float, float]:
        """(x, y) of the bounding-box centre in image sides, origin top left."""
        row, col = self.cell
        return (col + 0.5) / 3 + self.offset[0], (row + 0.5) / 3 + self.offset[1]


@dataclass(frozen=True)
class Scene:
    """Everything that was drawn, independent of resolution, and the prompt it was drawn for."""

    objects: tuple[ShapeObject, ...]
    background: str
    prompt: str


def max_jitter(size: str) -> float:
    return 1 / 6 - EXTENT[size] / 2 - CELL_MARGIN


def _relation_holds(relation: str, a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Cells a, b satisfy ``a <relation> b`` with the named axis dominating the other."""
    d_row, d_col = b[0] - a[0], b[1] - a[1]
    along, across = {"to the left of": (d_col, d_row), "to the right of": (-d_col, d_row),
                     "above": (d_row, d_col), "below": (-d_row, d_col)}[relation]
    return along > 0 and abs(across) < along


def _pick_cells(prompt: Prompt, rng: random.Random) -> list[tuple[int, int]]:
    if prompt.kind == "count":
        return rng.sample(CELLS, prompt.count)
    if prompt.kind == "relation":
        pairs = [(a, b) for a in CELLS for b in CELLS if _relation_holds(prompt.relation, a, b)]
        return list(rng.choice(pairs))
    fixed = [spec.cell for spec in prompt.objects]
    taken = [cell for cell in fixed if cell is not None]
    if len(set(taken)) < len(taken):
        raise ValueError(f"cannot render {format_prompt(prompt)!r}: two objects are placed in the same cell")
    free = [cell for cell in CELLS if cell not in taken]
    rng.shuffle(free)
    return [cell if cell is not None else free.pop() for cell in fixed]


def realize(prompt: Prompt, rng: random.Random, and_order: str = "any") -> Scene:
    """Draw every attribute the prompt leaves free; the result satisfies the prompt. ``and_order="reading"``:
    an "and" prompt that places neither object puts the first-named one first in reading order (an
    earlier row, or the same row further left); the draw is otherwise the same."""
    specs = prompt.objects * (prompt.count or 1)
    cells = _pick_cells(prompt, rng)
    if and_order == "reading" and prompt.kind == "and" and not any(spec.cell for spec in prompt.objects):
        cells = sorted(cells)                                   # cells are (row, column)
    if prompt.kind == "count":  # counted objects share every attribute, free ones included
        specs = (_fill(specs[0], rng),) * prompt.count
    objects = []
    for spec, cell in zip(specs, cells):
        spec = _fill(spec, rng)
        jitter = max_jitter(spec.size)
        offset = (rng.uniform(-jitter, jitter), rng.uniform(-jitter, jitter))
        objects.append(ShapeObject(spec.shape, spec.colour, spec.size, cell, offset))
    background = prompt.background or rng.choice(tuple(BACKGROUNDS))
    return Scene(tuple(objects), background, format_prompt(prompt))


def _fill(spec: ObjectSpec, rng: random.Random) -> ObjectSpec:
    return ObjectSpec(spec.shape, spec.colour or rng.choice(tuple(COLOURS)), spec.size or rng.choice(SIZES),
                      spec.cell)


def supersample_factor(resolution: int) -> int:
    return max(2, -(-256 // resolution))


def shape_polygons(shape: str, cx: float, cy: float, extent: float) -> list[list[tuple[float, float]]]:
    """The filled outline(s) of a shape as polygons; a circle is approximated by 64 vertices."""
    import math

    h = extent / 2
    if shape == "circle":
        return [[(cx + h * math.cos(2 * math.pi * k / 64), cy + h * math.sin(2 * math.pi * k / 64)) for k in range(64)]]
    if shape == "square":
        return [[(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]]
    if shape == "triangle":
        return [[(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]]
    a = h * CROSS_ARM
    return [[(cx - h, cy - a), (cx + h, cy - a), (cx + h, cy + a), (cx - h, cy + a)],
            [(cx - a, cy - h), (cx + a, cy - h), (cx + a, cy + h), (cx - a, cy + h)]]


def render_scene(scene: Scene, resolution: int = 32) -> Image.Image:
    """Draw a scene at ``resolution`` x ``resolution`` with area anti-aliasing."""
    if not isinstance(resolution, int) or resolution < 16:
        raise ValueError(f"resolution must be an integer >= 16, got {resolution!r}")
    big = resolution * supersample_factor(resolution)
    canvas = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        cx, cy = obj.centre
        for polygon in shape_polygons(obj.shape, cx * big, cy * big, EXTENT[obj.size] * big):
            draw.polygon(polygon, fill=PALETTE[obj.colour])
    return canvas.resize((resolution, resolution), Image.Resampling.BOX)


def scene_for(prompt: str, seed: int = 0, and_order: str = "any") -> Scene:
    """The scene ``render(prompt, seed)`` draws (``and_order``: :func:`realize`'s)."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if and_order not in AND_ORDERS:
        raise ValueError(f"and_order must be one of {AND_ORDERS}, got {and_order!r}")
    return realize(parse_prompt(prompt), random.Random(f"difflab-shapes-render-{seed}"), and_order)


def render(prompt: str, seed: int = 0, resolution: int = 32) -> Image.Image:
    """A real image that satisfies ``prompt`` (canonical grammar), deterministic from ``seed``."""
    return render_scene(scene_for(prompt, seed), resolution)


def _maybe(rng: random.Random, p: float, value):
    return value if rng.random() < p else None


def sample_prompt(rng: random.Random, forms: dict | None = None, relations: tuple | None = None) -> Prompt:
    """A random canonical prompt as the dataset draws them (colour named 90% of the time).

    ``forms`` (form -> weight; default :data:`FORM_WEIGHTS`) and ``relations`` (default all four) narrow
    the draw; the defaults draw exactly what the shapes dataset always drew.
    """
    forms = FORM_WEIGHTS if forms is None else forms
    kind = rng.choices(tuple(forms), weights=tuple(forms.values()))[0]
    if kind in EXTRA_FORMS:
        return _extra_prompt(kind, rng)
    n_objects = {"single": 1, "and": 2, "count": 1, "relation": 2}[kind]
    with_cell = kind in ("single", "and")
    objects = tuple(ObjectSpec(rng.choice(SHAPES), _maybe(rng, 0.9, rng.choice(tuple(COLOURS))),
                               _maybe(rng, 0.4, rng.choice(SIZES)),
                               _maybe(rng, 0.5 if with_cell else 0.0, rng.choice(CELLS)))
                    for _ in range(n_objects))
    if kind == "and" and objects[0].cell is not None and objects[0].cell == objects[1].cell:
        objects = (objects[0], ObjectSpec(objects[1].shape, objects[1].colour, objects[1].size, None))
    count = rng.choice((2, 3)) if kind == "count" else None
    relation = rng.choice(relations or RELATIONS) if kind == "relation" else None
    return Prompt(kind, objects, count, relation, _maybe(rng, 0.3, rng.choice(tuple(BACKGROUNDS))))


def _extra_prompt(kind: str, rng: random.Random) -> Prompt:
    """A prompt of one of :data:`EXTRA_FORMS`: the benchmark's own forms, which the default draw makes rarely
    (an unplaced pair with both colours: 0.2 x 0.81 x 0.25 of items; a bare single: 0.3 x 0.1 x 0.5)."""
    background = _maybe(rng, 0.3, rng.choice(tuple(BACKGROUNDS)))
    if kind == "bare":
        return Prompt("single", (ObjectSpec(rng.choice(SHAPES), None, _maybe(rng, 2 / 3, rng.choice(SIZES))),),
                      background=background)
    first, second = (ObjectSpec(rng.choice(SHAPES), rng.choice(tuple(COLOURS)), _maybe(rng, 0.4, rng.choice(SIZES)))
                     for _ in range(2))
    while (second.shape, second.colour) == (first.shape, first.colour):   # the bench's pairs differ in one or both
        second = ObjectSpec(rng.choice(SHAPES), rng.choice(tuple(COLOURS)), second.size)
    return Prompt("and", (first, second), background=background)


def has_held_out(scene: Scene) -> bool:
    return any((o.colour, o.shape) in HELD_OUT for o in scene.objects)


CURRICULUM_OPTIONS = ("forms", "relations", "captions", "and_order")


def check_curriculum(forms=None, relations=None, captions: str = "paraphrase", and_order: str = "any") -> tuple:
    """``(forms, relations, captions, and_order)`` validated, as :class:`ShapesDataset` keeps them."""
    if forms is not None:
        if not isinstance(forms, dict) or not forms or any(
                k not in ALL_FORMS or isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0
                for k, v in forms.items()) or not sum(forms.values()) > 0:
            raise ValueError(f"forms must map some of {', '.join(ALL_FORMS)} to non-negative weights with a "
                             f"positive sum, got {forms!r}")
        forms = {k: float(v) for k, v in forms.items()}
    if relations is not None:
        relations = (relations,) if isinstance(relations, str) else tuple(relations)
        if not relations or any(r not in RELATIONS for r in relations):
            raise ValueError(f"relations must be some of {', '.join(map(repr, RELATIONS))}, got {relations!r}")
    if captions not in CAPTION_STYLES:
        raise ValueError(f"captions must be one of {', '.join(CAPTION_STYLES)}, got {captions!r}")
    if and_order not in AND_ORDERS:
        raise ValueError(f"and_order must be one of {', '.join(AND_ORDERS)}, got {and_order!r}")
    return forms, relations, captions, and_order


class ShapesDataset(ProceduralSplit):
    """Captioned shapes scenes, rendered on the fly and identical on every run.

    Items are ``{"image": PIL RGB image, "caption": str, "prompt": canonical prompt, "scene": Scene}``.
    Train captions are drawn from several phrasings per form; val and test captions are the canonical
    prompts the oracle parses. Train never shows the colour-shape pairs in ``HELD_OUT``; val and test do.
    Each split draws from its own seed stream, so no item is shared.

    A curriculum narrows the training draw: ``forms`` (form -> weight, e.g. ``{"relation": 1}``),
    ``relations`` (e.g. ``("above",)``) and ``captions="canonical"`` (train captions are the canonical
    prompts, so the first-named object of "X above Y" is always the upper one). The bundled model's
    relation section in BENCHMARKS.md shows why: over paraphrases, only word order times relation word
    says which object goes where, an XOR that gradient descent does not start on. ``and_order="reading"``:
    a pair of unplaced objects ("X and Y") lies in the caption's order, X first in reading order, and
    paraphrases keep that order; word order then says which colour goes with which shape (BENCHMARKS.md,
    "Binding two objects").
    """

    world = "shapes"
    channels = 3                  # RGB images
    num_classes = None            # conditioned on captions, not class labels
    preview_prompts = ("a red circle", "two blue squares", "a green triangle above a yellow cross",
                       "a small purple square in the top left")   # the trainer's sample grids

    def __init__(self, split: str = "train", resolution: int = 32, length: int | None = None,
                 forms: dict | None = None, relations=None, captions: str = "paraphrase", and_order: str = "any"):
        self.init_split(split, length)
        if not isinstance(resolution, int) or resolution < 16:
            raise ValueError(f"resolution must be an integer >= 16, got {resolution!r}")
        self.resolution = resolution
        self.forms, self.relations, self.captions, self.and_order = check_curriculum(forms, relations, captions,
                                                                                      and_order)

    def scene(self, index: int) -> tuple[Scene, str]:
        """The scene and caption of item ``index`` (cheap: nothing is drawn)."""
        keep = self.and_order == "reading"
        caption = (lambda prompt, rng: paraphrase(prompt, rng, keep_order=keep)) if self.captions == "paraphrase" \
            else lambda prompt, _: format_prompt(prompt)
        return self.draw(index, lambda rng: sample_prompt(rng, self.forms, self.relations),
                         lambda prompt, rng: realize(prompt, rng, self.and_order), lambda scene, _: has_held_out(scene),
                         caption)

    def __getitem__(self, index: int) -> dict:
        scene, caption = self.scene(index)
        return {"image": render_scene(scene, self.resolution), "caption": caption, "prompt": scene.prompt,
                "scene": scene}
