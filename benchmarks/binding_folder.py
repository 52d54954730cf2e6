"""Phase 1 of the binding curriculum: a folder of two-object scenes captioned "X and Y", X first in reading order.

    python benchmarks/binding_folder.py runs/binding-folder 12000
    difflab train --preset shapes --dataset folder --data-dir runs/binding-folder --init-from MODEL \\
        --timestep-sampling logit_normal --logit-mean 2 --lr 3e-4 --lr-schedule constant --lr-warmup 20 \\
        --threads 1 --max-minutes 30 --out runs/bind1

Each scene is a shapes relation scene, "X to the left of Y" or "X above Y" (held-out colour-shape pairs
never drawn), captioned as the canonical two-object prompt "X and Y": the first-named object is the one
further left or higher, so word order alone says which colour goes with which shape, a first-order
signal (BENCHMARKS.md, "Binding two objects"). The second phase trains on the dataset's own mixture with
``and_order = "reading"`` (``benchmarks/configs/binding_phase2.toml``), which keeps the same convention.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a new folder")
    parser.add_argument("n", type=int, help="images")
    parser.add_argument("--resolution", type=int, default=32)
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} exists and is not empty")
    if not 1 <= args.n <= 1_000_000:
        parser.error(f"n must be in [1, 1000000], got {args.n}")
    from difflab.data.shapes import has_held_out, realize, render_scene, sample_prompt
    from difflab.data.shapes_grammar import Prompt, format_prompt
    args.out.mkdir(parents=True, exist_ok=True)
    rng, rows = random.Random(23), []
    while len(rows) < args.n:
        prompt = sample_prompt(rng, forms={"relation": 1}, relations=("to the left of", "above"))
        scene = realize(prompt, rng)
        if has_held_out(scene):
            continue
        name = f"{len(rows):05d}.png"
        render_scene(scene, args.resolution).save(args.out / name)
        caption = format_prompt(Prompt("and", prompt.objects, background=prompt.background))
        rows.append({"file_name": name, "text": caption})
    (args.out / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {len(rows)} images and metadata.jsonl to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
