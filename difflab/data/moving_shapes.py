"""The moving-shapes world: procedural captioned video clips, deterministic from a seed.

A clip holds one or two flat shapes (the shapes world's shapes, colours and sizes) that move in
straight lines at constant speed: one object moving right, left, up or down; one object bouncing
between the side walls (elastic reflection, at least one reversal in the clip); or two objects in
different rows passing each other (one moves right, the other left, and their x order swaps). Every
frame is drawn with the shapes world's supersampled renderer (``difflab.data.shapes.render_scene``),
so positions are continuous and sub-pixel exact, and every object stays inside the frame throughout.

Time is measured in *reference frames*: a clip lasts ``DURATION`` = 7 reference frames (8 frames at
the default frame count); rendering ``frames`` frames samples the same motion at ``frames`` evenly
spaced times. Speeds are in image sides per reference frame, so a slow object moves 0.03 x 7 = 0.21
of the image side over a clip whatever the frame count.

``render(prompt, seed)`` draws a clip that satisfies a prompt (``difflab.data.moving_shapes_grammar``);
``MovingShapesDataset`` serves ``{"video", "caption", "prompt", "clip"}`` items; the judge is
``difflab.metrics.motion``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from difflab.data.moving_shapes_grammar import (DIRECTIONS, KINDS, MotionPrompt, format_motion, paraphrase,
                                                parse_motion)
from difflab.data.procedural import ProceduralSplit
from difflab.data.shapes import EXTENT, Scene, ShapeObject, render_scene
from difflab.data.shapes_grammar import BACKGROUNDS, COLOURS, SHAPES, SIZES, ObjectSpec

REFERENCE_FRAMES = 8
DURATION = REFERENCE_FRAMES - 1  # a clip's length in reference frames
SPEEDS = {"slowly": 0.03, "normal": 0.06, "quickly": 0.09}  # image sides per reference frame (1 : 2 : 3)
DIRECTION_VECTORS = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}  # y grows downwards
EDGE_MARGIN = 0.02  # smallest gap between an object's box and the frame border, in image sides
ROW_GAP = 0.06      # smallest vertical gap between the boxes of two passing objects
CROSS_GAP = 0.08    # passing objects' centres are at least this far apart in x at the first and last frame
BOUNCE_TIMES = (2, 3, 4, 5)  # a bouncing object touches its wall at one of these reference times
MIN_FRAMES = 4
# (colour, shape, direction) that train never shows; val and test do. Each colour, shape and
# direction still appears in train in every other combination.
HELD_OUT = frozenset({("red", "triangle", "left"), ("blue", "cross", "up"), ("yellow", "circle", "down"),
                      ("purple", "square", "right")})
KIND_WEIGHTS = {"move": 0.6, "bounce": 0.2, "pass": 0.2}
SPEED_CHOICES = (None, "slowly", "quickly")  # None: unstated, rendered at normal speed


def bounds(size: str) -> tuple[float, float]:
    """The range of an object's box centre (either axis) that keeps the box ``EDGE_MARGIN`` inside."""
    half = EXTENT[size] / 2
    return EDGE_MARGIN + half, 1 - EDGE_MARGIN - half


def reflect(x: float, lo: float, hi: float) -> float:
    """Fold free motion on a line into ``[lo, hi]`` by elastic reflection at both ends (a triangle wave)."""
    period = 2 * (hi - lo)
    u = (x - lo) % period
    return lo + (u if u <= hi - lo else period - u)


@dataclass(frozen=True)
class MovingObject:
    """One object in uniform motion; positions are bounding-box centres in image sides, origin top left."""

    shape: str
    colour: str
    size: str
    start: tuple[float, float]     # centre at time 0
    velocity: tuple[float, float]  # image sides per reference frame
    bounces: bool = False          # reflects off the left and right walls

    def centre(self, time: float) -> tuple[float, float]:
        """Centre at ``time`` (in reference frames): x(t) = x0 + v t, folded between the walls if it bounces."""
        x = self.start[0] + self.velocity[0] * time
        y = self.start[1] + self.velocity[1] * time
        return (reflect(x, *bounds(self.size)) if self.bounces else x), y

    def directions(self) -> set[str]:
        """The directions this object is seen moving in (both horizontal ones if it bounces)."""
        vx, vy = self.velocity
        found = {"right" if vx > 0 else "left"} if vx else set()
        found |= {"down" if vy > 0 else "up"} if vy else set()
        return (found | {"right", "left"}) if self.bounces else found


@dataclass(frozen=True)
class Clip:
    """Everything that is drawn, independent of resolution and frame count, and its canonical prompt."""

    objects: tuple[MovingObject, ...]
    background: str
    prompt: str


def frame_times(frames: int) -> list[float]:
    """The reference times of ``frames`` evenly spaced frames over the clip's ``DURATION``."""
    return [DURATION * k / (frames - 1) for k in range(frames)]


def _uniform(rng: random.Random, lo: float, hi: float) -> float:
    assert lo <= hi, "the world's constants leave no room for this motion"
    return rng.uniform(lo, hi)


def _moving(p: MotionPrompt, sizes: list[str], speed: float, rng: random.Random) -> tuple[MovingObject, ...]:
    lo, hi = bounds(sizes[0])
    travel = speed * DURATION
    ux, uy = DIRECTION_VECTORS[p.direction]
    sign = ux + uy
    along = _uniform(rng, lo, hi - travel) if sign > 0 else _uniform(rng, lo + travel, hi)
    across = rng.uniform(lo, hi)
    start = (along, across) if ux else (across, along)
    spec = p.objects[0]
    return (MovingObject(spec.shape, spec.colour, sizes[0], start, (ux * speed, uy * speed)),)


def _bouncing(p: MotionPrompt, sizes: list[str], speed: float, rng: random.Random) -> tuple[MovingObject, ...]:
    """Head for a wall and touch it at a reference time in ``BOUNCE_TIMES``, so both legs last >= 2 frames."""
    lo, hi = bounds(sizes[0])
    hit = rng.choice(BOUNCE_TIMES)
    assert speed * max(hit, DURATION - hit) <= hi - lo, "a bounce must not reach the other wall"
    to_right = rng.random() < 0.5
    x0 = hi - speed * hit if to_right else lo + speed * hit
    spec = p.objects[0]
    velocity = (speed if to_right else -speed, 0.0)
    return (MovingObject(spec.shape, spec.colour, sizes[0], (x0, rng.uniform(lo, hi)), velocity, bounces=True),)


def _draw_until(draw, accept):
    """Rejection sampling: ``draw()`` until ``accept(value)``; the constants make acceptance likely."""
    for _ in range(10_000):
        value = draw()
        if accept(value):
            return value
    raise RuntimeError("rejection sampling failed: the world's constants leave no room for this clip")


def _passing(p: MotionPrompt, sizes: list[str], speed: float, rng: random.Random) -> tuple[MovingObject, ...]:
    """Two rows, one object moving right and one left; the gap x_left_mover - x_right_mover goes from
    ``d`` to ``d - 2 v DURATION``, so picking ``d`` in [CROSS_GAP, 2 v DURATION - CROSS_GAP] makes them cross."""
    (lo_a, hi_a), (lo_b, hi_b) = bounds(sizes[0]), bounds(sizes[1])
    row_gap = (EXTENT[sizes[0]] + EXTENT[sizes[1]]) / 2 + ROW_GAP
    ya, yb = _draw_until(lambda: (rng.uniform(lo_a, hi_a), rng.uniform(lo_b, hi_b)),
                         lambda ys: abs(ys[0] - ys[1]) >= row_gap)
    travel = speed * DURATION
    a_right = rng.random() < 0.5
    (lo_r, hi_r), (lo_l, hi_l) = ((lo_a, hi_a), (lo_b, hi_b)) if a_right else ((lo_b, hi_b), (lo_a, hi_a))
    x_right, x_left = _draw_until(lambda: (_uniform(rng, lo_r, hi_r - travel), _uniform(rng, lo_l + travel, hi_l)),
                                  lambda xs: CROSS_GAP <= xs[1] - xs[0] <= 2 * travel - CROSS_GAP)
    xa, xb = (x_right, x_left) if a_right else (x_left, x_right)
    va, vb = (speed, -speed) if a_right else (-speed, speed)
    (a, b) = p.objects
    return (MovingObject(a.shape, a.colour, sizes[0], (xa, ya), (va, 0.0)),
            MovingObject(b.shape, b.colour, sizes[1], (xb, yb), (vb, 0.0)))


def realize(prompt: MotionPrompt, rng: random.Random) -> Clip:
    """Draw every attribute the prompt leaves free (sizes, positions, timing); the clip satisfies it."""
    sizes = [rng.choice(SIZES) for _ in prompt.objects]
    speed = SPEEDS[prompt.speed or "normal"]
    make = {"move": _moving, "bounce": _bouncing, "pass": _passing}[prompt.kind]
    return Clip(make(prompt, sizes, speed, rng), prompt.background or "white", format_motion(prompt))


def _check_frames(frames) -> None:
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < MIN_FRAMES:
        raise ValueError(f"frames must be an integer >= {MIN_FRAMES}, got {frames!r}")


def render_clip(clip: Clip, resolution: int = 32, frames: int = 8) -> np.ndarray:
    """Draw a clip as uint8 pixels ``[frames, resolution, resolution, 3]``, each frame area anti-aliased."""
    _check_frames(frames)
    pictures = []
    for time in frame_times(frames):
        objects = []
        for o in clip.objects:
            x, y = o.centre(time)  # ShapeObject places centres relative to a grid cell: use the middle one
            objects.append(ShapeObject(o.shape, o.colour, o.size, (1, 1), (x - 0.5, y - 0.5)))
        pictures.append(np.asarray(render_scene(Scene(tuple(objects), clip.background, clip.prompt), resolution)))
    return np.stack(pictures)  # (T, H, W, 3)


def clip_for(prompt: str, seed: int = 0) -> Clip:
    """The clip ``render(prompt, seed)`` draws."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return realize(parse_motion(prompt), random.Random(f"difflab-moving-shapes-render-{seed}"))


def render(prompt: str, seed: int = 0, resolution: int = 32, frames: int = 8) -> np.ndarray:
    """A real clip (uint8 ``[T, H, W, 3]``) that satisfies ``prompt``, deterministic from ``seed``."""
    return render_clip(clip_for(prompt, seed), resolution, frames)


def sample_prompt(rng: random.Random) -> MotionPrompt:
    """A random canonical prompt as the dataset draws them (two passing objects always differ)."""
    kind = rng.choices(KINDS, weights=[KIND_WEIGHTS[k] for k in KINDS])[0]
    first = ObjectSpec(rng.choice(SHAPES), rng.choice(tuple(COLOURS)))
    objects = (first,)
    if kind == "pass":
        second = _draw_until(lambda: ObjectSpec(rng.choice(SHAPES), rng.choice(tuple(COLOURS))),
                             lambda spec: spec != first)
        objects = (first, second)
    direction = rng.choice(DIRECTIONS) if kind == "move" else None
    background = rng.choice(tuple(BACKGROUNDS)) if rng.random() < 0.2 else None
    return MotionPrompt(kind, objects, direction, rng.choice(SPEED_CHOICES), background)


def motions(clip: Clip) -> set[tuple[str, str, str]]:
    """Every (colour, shape, direction) the clip shows."""
    return {(o.colour, o.shape, d) for o in clip.objects for d in o.directions()}


def has_held_out(clip: Clip) -> bool:
    return bool(motions(clip) & HELD_OUT)


def held_out_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` canonical prompts of single objects moving in a held-out (colour, shape, direction).

    The held-out triples take turns, so each appears ``n / len(HELD_OUT)`` times; speeds are drawn.
    """
    rng = random.Random(f"difflab-moving-shapes-held-out-{seed}")
    triples = sorted(HELD_OUT)
    return [format_motion(MotionPrompt("move", (ObjectSpec(shape, colour),), direction, rng.choice(SPEED_CHOICES)))
            for colour, shape, direction in (triples[i % len(triples)] for i in range(n))]


class MovingShapesDataset(ProceduralSplit):
    """Captioned moving-shapes clips, rendered on the fly and identical on every run.

    Items are ``{"video": uint8 array [T, H, W, 3], "caption": str, "prompt": canonical prompt,
    "clip": Clip}``. Train captions come in several phrasings; val and test captions are the canonical
    prompts the judge parses. Train never shows a (colour, shape, direction) in ``HELD_OUT``; val and
    test do. Each split draws from its own seed stream, so no item is shared.
    """

    world = "moving-shapes"
    channels = 3                  # RGB frames
    media = "video"               # items hold "video", uint8 [T, H, W, 3]; the trainer reads this
    num_classes = None            # conditioned on captions, not class labels
    preview_prompts = ("a red circle moving right", "a blue square moving down quickly", "a green triangle bouncing",
                       "a yellow cross and a purple circle passing each other")   # the trainer's sample grids

    def __init__(self, split: str = "train", resolution: int = 32, length: int | None = None, frames: int = 8):
        self.init_split(split, length)
        if not isinstance(resolution, int) or resolution < 16:
            raise ValueError(f"resolution must be an integer >= 16, got {resolution!r}")
        _check_frames(frames)
        self.resolution, self.frames = resolution, frames

    def clip(self, index: int) -> tuple[Clip, str]:
        """The clip and caption of item ``index`` (cheap: nothing is drawn)."""
        return self.draw(index, sample_prompt, realize, lambda clip, _: has_held_out(clip), paraphrase)

    def __getitem__(self, index: int) -> dict:
        clip, caption = self.clip(index)
        return {"video": render_clip(clip, self.resolution, self.frames), "caption": caption, "prompt": clip.prompt,
                "clip": clip}
