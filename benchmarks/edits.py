"""Edits on a trained shapes model, judged by the adherence oracle.

    python benchmarks/edits.py [MODEL] [--cases 24] [--strengths 0.6,0.75,0.9]

- inpainting: a real render of one object on one side; the opposite third of the canvas is masked
  and the prompt asks for a new object of another colour. Success: the oracle finds the new object
  (which can only be in the hole, since everything else is kept) and the original object still obeys
  its own prompt; the unmasked pixels are compared exactly. A stricter row also asks for the new
  object's cell ("on the right"), which tests the model's sense of position as well.
- image-to-image: a real render of one object in the centre; the prompt changes its colour (or its
  shape). Success: the oracle accepts the new prompt on the output.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
from PIL import Image

from difflab.data.shapes import render
from difflab.metrics.adherence import check
from difflab.pipelines import Pipeline

COLOURS = ["red", "orange", "yellow", "green", "blue", "purple"]
SHAPES = ["circle", "square", "triangle", "cross"]


def inpaint_cases(n: int, rng: random.Random, with_cell: bool):
    for i in range(n):
        left = i % 2 == 0
        colour = rng.choice(COLOURS)
        keep = f"a {colour} {rng.choice(SHAPES)} {'on the left' if left else 'on the right'}"
        new = f"a {rng.choice([c for c in COLOURS if c != colour])} {rng.choice(SHAPES)}"
        if with_cell:
            new += " on the right" if left else " on the left"
        yield keep, new, left, i


def inpaint(pipe: Pipeline, n: int, steps: int, guidance: float, with_cell: bool = False) -> dict:
    rng, ok, exact = random.Random(0), 0, 0
    size = pipe.resolution
    for keep, new, left, seed in inpaint_cases(n, rng, with_cell):
        image = render(keep, seed=seed, resolution=size)
        mask = Image.new("L", (size, size), 0)
        third = size // 3
        mask.paste(255, (size - third, 0, size, size) if left else (0, 0, third, size))
        out = pipe(new, image=image, mask=mask, seed=seed, steps=steps, guidance_scale=guidance).images[0]
        keep_pixels = np.asarray(mask) == 0
        exact += np.array_equal(np.asarray(out)[keep_pixels], np.asarray(image)[keep_pixels])
        # the image holds both objects: each prompt names one of them, so extra objects are allowed
        ok += check(out, new, strict_single=False)["ok"] and check(out, keep, strict_single=False)["ok"]
    return {"cases": n, "follows_prompt": ok / n, "unmasked_exact": exact / n}


def img2img(pipe: Pipeline, n: int, strength: float, steps: int, guidance: float) -> dict:
    rng, colour_ok, shape_ok = random.Random(1), 0, 0
    for seed in range(n):
        colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
        source = render(f"a large {colour} {shape} in the center", seed=seed, resolution=pipe.resolution)
        other_colour = rng.choice([c for c in COLOURS if c != colour])
        other_shape = rng.choice([s for s in SHAPES if s != shape])
        for prompt, counter in ((f"a {other_colour} {shape}", "colour"), (f"a {colour} {other_shape}", "shape")):
            out = pipe(prompt, image=source, strength=strength, seed=seed, steps=steps,
                       guidance_scale=guidance).images[0]
            if check(out, prompt)["ok"]:
                colour_ok += counter == "colour"
                shape_ok += counter == "shape"
    return {"cases": n, "strength": strength, "colour_changed": colour_ok / n, "shape_changed": shape_ok / n}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None, help="model package (default: the bundled model)")
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--strengths", default="0.6,0.75,0.9")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=None)
    args = parser.parse_args()
    pipe = Pipeline.from_pretrained(args.model)
    guidance = args.guidance if args.guidance is not None else pipe.defaults["guidance_scale"]
    started = time.perf_counter()
    for with_cell in (False, True):
        result = inpaint(pipe, args.cases, args.steps, guidance, with_cell)
        what = "new object and its cell" if with_cell else "new object"
        print(f"| inpaint a new object into an empty third ({what} checked) | {result['cases']} | "
              f"{result['follows_prompt']:.2f} | unmasked pixels exact: {result['unmasked_exact']:.2f} |")
    for strength in (float(s) for s in args.strengths.split(",")):
        r = img2img(pipe, args.cases, strength, args.steps, guidance)
        print(f"| img2img at strength {strength} | {r['cases']} | colour changed: {r['colour_changed']:.2f} | "
              f"shape changed: {r['shape_changed']:.2f} |")
    print(f"({time.perf_counter() - started:.0f} s, guidance {guidance}, {args.steps} steps)")


if __name__ == "__main__":
    main()
