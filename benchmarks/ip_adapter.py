"""IP-Adapter on the bundled model: does the output show the image prompt's objects? (issue 15)

Two measurements, each against the same call without the image prompt (same seeds):

- **image alone** (empty text): reference scenes drawn as the dataset draws its prompts (every colour
  pinned); the oracle checks that the output holds the reference's objects, shape and colour (one
  object: only it; two different ones: both; n equal ones: exactly n), wherever they lie;
  and, as the ceiling the base model sets, the same scenes asked for in words (no image);
- **text + image**: the reference is one object ("a red circle" somewhere); the text names a shape,
  size and place without a colour ("a small circle in the top left"); the output must show both: the
  text's shape, size and place in the reference's colour.

    python benchmarks/ip_adapter.py --adapter runs/ip/model --out benchmarks/results/ip_adapter.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

from difflab.data.shapes import realize, render, render_scene, sample_prompt
from difflab.data.shapes_grammar import (CELL_NAMES, COLOURS, COUNTS, SHAPES, SIZES, ObjectSpec, Prompt, article,
                                         format_prompt)


def image_only_cases(n: int, seed: int = 0) -> list[dict]:
    """(reference image, the prompt the oracle checks) for ``n`` scenes of one to three objects."""
    rng, cases = random.Random(f"difflab-ip-bench-{seed}"), []
    while len(cases) < n:
        scene = realize(sample_prompt(rng), rng)
        kinds = Counter((o.shape, o.colour) for o in scene.objects)
        if len(kinds) == 1:
            (shape, colour), count = next(iter(kinds.items()))
            judge = Prompt("single", (ObjectSpec(shape, colour),)) if count == 1 else \
                Prompt("count", (ObjectSpec(shape, colour),), count=count)
        elif len(kinds) == 2 and all(c == 1 for c in kinds.values()):
            judge = Prompt("and", tuple(ObjectSpec(s, c) for s, c in kinds))
        else:
            continue
        cases.append({"image": render_scene(scene), "check": format_prompt(judge),
                      "seed": 1_000_000 * seed + len(cases),
                      "kind": {"single": "one object", "count": "n equal objects", "and": "two objects"}[judge.kind]})
    return cases


def text_and_image_cases(n: int, seed: int = 0) -> list[dict]:
    rng, cases = random.Random(f"difflab-ip-bench-text-{seed}"), []
    for i in range(n):
        shape, colour, size = rng.choice(SHAPES), rng.choice(tuple(COLOURS)), rng.choice(SIZES)
        cell = rng.choice(tuple(CELL_NAMES))
        text = f"{article(size)} {size} {shape} {CELL_NAMES[cell]}"
        cases.append({"image": render(f"a {colour} {shape}", 500 + i), "text": text,
                      "check": f"{article(size)} {size} {colour} {shape} {CELL_NAMES[cell]}",
                      "seed": 1_000_000 * seed + 10_000 + i})
    return cases


def run(pipe, cases: list[dict], with_image: bool, scale: float = 1.0, batch: int = 16, guidance=None,
        **sampling) -> float:
    """The fraction of ``cases`` the oracle accepts."""
    oks = verdicts(pipe, cases, with_image, scale, batch, guidance, **sampling)
    return sum(oks) / len(oks)


def by_kind(cases: list[dict], oks: list[bool]) -> dict:
    kinds = sorted({c["kind"] for c in cases})
    return {k: round(sum(ok for c, ok in zip(cases, oks) if c["kind"] == k) / sum(c["kind"] == k for c in cases), 3)
            for k in kinds}


def count_misses(cases: list[dict], oks: list[bool], found: list[int]) -> dict:
    """For the n-equal-objects cases the oracle refused: how many had each (objects found - n)."""
    misses = Counter(k - COUNTS[c["check"].split()[0]] for c, ok, k in zip(cases, oks, found)
                     if c["kind"] == "n equal objects" and not ok)
    return {f"{d:+d}": misses[d] for d in sorted(misses)}


def verdicts(pipe, cases: list[dict], with_image: bool, scale: float = 1.0, batch: int = 16,
             guidance=None, found: list | None = None, **sampling) -> list[bool]:
    """The oracle's verdict on each case; ``guidance`` None: the package's guidance scale; ``sampling``:
    ``sampler``, ``steps`` and ``spacing`` (None: the package's). ``found``: a list to extend with the
    number of objects the oracle finds in each output."""
    from difflab.metrics.adherence import check
    from difflab.metrics.detect import detect
    oks = []
    for start in range(0, len(cases), batch):
        chunk = cases[start:start + batch]
        extra = {"ip_image": [c["image"] for c in chunk], "ip_scale": scale} if with_image else {}
        images = pipe([c.get("text", "") for c in chunk], seed=[c["seed"] for c in chunk], guidance_scale=guidance,
                      **extra, **sampling).images
        oks += [check(im.convert("RGB"), c["check"])["ok"] for im, c in zip(images, chunk)]
        if found is not None:
            found += [len(detect(im.convert("RGB"))[0]) for im in images]
    return oks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", required=True, help="an IP-Adapter package trained on the model")
    parser.add_argument("--model", default="shapes")
    parser.add_argument("-n", type=int, default=100, help="cases of each task")
    parser.add_argument("--scale", type=float, help="ip_scale (default: the adapter package's, else 1)")
    parser.add_argument("--guidance", type=float, help="the guidance scale of every call (default: the package's)")
    parser.add_argument("--sampler", help="every call's sampler (default: the package's)")
    parser.add_argument("--steps", type=int, help="every call's steps (default: the package's)")
    parser.add_argument("--spacing", help="every call's sigma spacing (default: the package's)")
    parser.add_argument("--image-alone-only", action="store_true",
                        help="only the image-alone outputs (no baselines, no text + image): a quick sweep")
    parser.add_argument("--case-seed", type=int, default=0,
                        help="which scenes: 0 the cases settings were chosen on; another seed, fresh ones to confirm")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.case_seed < 0:
        parser.error(f"--case-seed must be a non-negative integer, got {args.case_seed}")
    if args.guidance is not None and not 0 <= args.guidance <= 30:
        parser.error(f"--guidance must be in [0, 30] (1: no guidance), got {args.guidance:g}")
    from difflab.settings import SPACINGS
    if args.spacing is not None and args.spacing not in SPACINGS:
        parser.error(f"--spacing must be one of {', '.join(SPACINGS)}, got {args.spacing!r}")
    import torch

    from difflab.pipelines import Pipeline
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = Pipeline.from_pretrained(args.model, ip_adapter=args.adapter)
    sampling = {"sampler": args.sampler, "steps": args.steps, "spacing": args.spacing}
    rows = {}
    tasks = (("image alone", image_only_cases(args.n, args.case_seed)),
             ("text + image", text_and_image_cases(args.n, args.case_seed)))
    for name, cases in tasks[:1] if args.image_alone_only else tasks:
        found = [] if name == "image alone" else None   # objects per output, for the count misses
        oks = verdicts(pipe, cases, True, args.scale, guidance=args.guidance, found=found, **sampling)
        with_image = sum(oks) / len(oks)
        if args.image_alone_only:
            rows[name] = {"with_image": with_image, "n": len(cases), "by_kind": by_kind(cases, oks),
                          "count_misses": count_misses(cases, oks, found)}
            print(f"by kind of scene: {rows[name]['by_kind']}; n equal objects refused, by objects found - n: "
                  f"{rows[name]['count_misses']}", file=sys.stderr)
            break
        without = run(pipe, cases, False, guidance=args.guidance, **sampling)
        rows[name] = {"with_image": with_image, "without_image": without, "n": len(cases)}
        if name == "image alone":   # the ceiling the base model sets: the same scenes asked for in words
            as_text = verdicts(pipe, [{**c, "text": c["check"]} for c in cases], False, guidance=args.guidance,
                               **sampling)
            rows[name] |= {"as_text": sum(as_text) / len(as_text), "by_kind": by_kind(cases, oks),
                           "as_text_by_kind": by_kind(cases, as_text), "count_misses": count_misses(cases, oks, found)}
            print(f"by kind of scene: {rows[name]['by_kind']} (as text: {rows[name]['as_text_by_kind']})",
                  file=sys.stderr)
        print(f"{name}: {with_image:.3f} with the image prompt, {without:.3f} without", file=sys.stderr, flush=True)
    scale = pipe.ip_scale_default if args.scale is None else args.scale
    print(f"model {args.model}, IP-Adapter {args.adapter}, scale {scale:g}, {args.n} cases each "
          f"(case seed {args.case_seed}), "
          f"sampler {args.sampler or 'of the package'}, steps {args.steps or 'of the package'}, "
          f"spacing {args.spacing or 'of the package'}\n")
    print("| task | with the image prompt | without it | the scene as text, no image | cases |\n|---|---|---|---|---|")
    for name, row in rows.items():
        as_text = f"{row['as_text']:.3f}" if "as_text" in row else ""
        without = f"{row['without_image']:.3f}" if "without_image" in row else ""
        print(f"| {name} | **{row['with_image']:.3f}** | {without} | {as_text} | {row['n']} |")
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "adapter": args.adapter, "scale": scale,
                                        "case_seed": args.case_seed,
                                        "guidance": args.guidance, **sampling,
                                        "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
