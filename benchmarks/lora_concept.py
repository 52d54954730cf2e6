"""Teach the bundled model a colour it never saw, with a LoRA on 32 images (issue 15, LoRA "Must show").

The shapes world can draw ``cyan`` (``difflab.data.shapes_grammar.NOVEL_COLOURS``) but no dataset ever
samples it, so the bundled model has never seen the word or the hue. This script

1. writes a kohya-style folder of ``--images`` (32) renders with captions (``metadata.jsonl``): prompts
   drawn as the dataset draws them, with the first object made cyan, so most images also show old
   colours under their right names (``--concept scenes``); or single cyan objects (``singles``), or
   half of each (``mixed``);
2. trains a LoRA on it with the CLI (``difflab train --init-from shapes --lora-rank R --dataset folder``)
   for ``--steps`` steps (at most ``--minutes`` of training);
3. generates, with and without the LoRA (scale 1, the package's sampler, steps and guidance):
   - the new-concept prompts: every single-object prompt "a [size] cyan <shape> [on a <bg> background]"
     (48 prompts, ``--seeds`` seeds each), and the same prompts in blue (what the base model does with a
     colour it knows);
   - shapes-bench (``--limit`` prompts, all 540 by default) for the old concepts;
   - the bench with each prompt's first object made cyan (``--cyan-limit``), for cyan in the harder forms;
   and scores them with the oracle taught cyan (seven colours) and, for the bench, also with the
   six-colour oracle the bench uses elsewhere.

    python benchmarks/lora_concept.py --out runs/cyan --results benchmarks/results/lora_concept.json

Steps 1-2 are skipped when ``OUT`` already holds the folder / the adapter (rerun the evaluation alone).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from difflab.data.shapes import render, sample_prompt
from difflab.data.shapes_grammar import BACKGROUNDS, PALETTE, SHAPES, SIZES, ObjectSpec, Prompt, format_prompt

COLOUR = "cyan"
COLUMNS = ("single_object", "two_objects", "counting", "colours", "position", "relation")


def with_colour(prompt: Prompt, colour: str) -> Prompt:
    """``prompt`` with its first object (every counted object) in ``colour``; two objects never both get it."""
    first = replace(prompt.objects[0], colour=colour)
    rest = tuple(o if o.colour != colour else replace(o, colour=None) for o in prompt.objects[1:])
    return replace(prompt, objects=(first, *rest))


def write_folder(folder: Path, n: int, seed: int = 0, kind: str = "scenes", repeats: int = 1) -> list[str]:
    """``n`` captioned renders (``000.png`` ..., ``metadata.jsonl``) with a cyan object each: scenes drawn
    as the dataset draws them (``scenes``), single cyan objects in the new-concept prompts' form
    (``singles``: the concept shown alone, as DreamBooth's subject images are), or half of each (``mixed``).
    ``repeats`` > 1 puts them in kohya's ``{repeats}_cyan/`` sub-folder: each counts that many times."""
    rng = random.Random(f"difflab-lora-concept-{seed}")
    sub = f"{repeats}_{COLOUR}/" if repeats > 1 else ""
    (folder / sub).mkdir(parents=True)
    lines, singles = [], concept_prompts(COLOUR)
    for i in range(n):
        alone = kind == "singles" or kind == "mixed" and i % 2 == 0
        prompt = rng.choice(singles) if alone else format_prompt(with_colour(sample_prompt(rng), COLOUR))
        render(prompt, seed=10_000 + i).save(folder / f"{sub}{i:03d}.png")
        lines.append(json.dumps({"file_name": f"{sub}{i:03d}.png", "text": prompt}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return [json.loads(line)["text"] for line in lines]


def write_prior(folder: Path, n: int, seed: int = 0, model: str = "shapes", source: str = "model") -> None:
    """DreamBooth's prior preservation (Ruiz et al. 2023, eq. 2): ``n`` images the base model itself
    makes for prompts drawn as the dataset draws them (old colours only), added to the folder with
    their prompts, so the LoRA also keeps reproducing what the model did before. ``source="renders"``:
    the renderer's images of those prompts instead (kohya's "regularization images" are real pictures
    of the class): the old concepts as the model was taught them, without the model's own flaws."""
    rng = random.Random(f"difflab-lora-prior-{seed}")
    prompts = [format_prompt(sample_prompt(rng)) for _ in range(n)]
    if source == "renders":
        images = [render(p, seed=20_000 + i) for i, p in enumerate(prompts)]
    else:
        from difflab.pipelines import Pipeline
        images = generate(Pipeline.from_pretrained(model), [{"prompt": p, "seed": 20_000 + i} for i, p in enumerate(prompts)])
    lines = []
    for i, (prompt, image) in enumerate(zip(prompts, images)):
        image.save(folder / f"prior-{i:03d}.png")
        lines.append(json.dumps({"file_name": f"prior-{i:03d}.png", "text": prompt}))
    with open(folder / "metadata.jsonl", "a") as f:
        f.write("\n".join(lines) + "\n")


def concept_prompts(colour: str) -> list[str]:
    """Every single-object prompt in ``colour``: 4 shapes x (no size, small, large) x (no background, 3)."""
    out = []
    for shape in SHAPES:
        for size in (None, *SIZES):
            for background in (None, *BACKGROUNDS):
                out.append(format_prompt(Prompt("single", (ObjectSpec(shape, colour, size),), background=background)))
    return out


def generate(pipe, entries: list[dict], batch: int = 16) -> list:
    images = []
    for start in range(0, len(entries), batch):
        chunk = entries[start: start + batch]
        images += pipe([e["prompt"] for e in chunk], seed=[e["seed"] for e in chunk]).images
        print(f"  {len(images)}/{len(entries)}", end="\r", file=sys.stderr, flush=True)
    return [im.convert("RGB") for im in images]


def score(images: list, entries: list[dict], colours=None) -> dict:
    from difflab.metrics.adherence import check
    from difflab.metrics.bench import report

    return report(entries, [check(im, e["prompt"], colours=colours)["ok"] for im, e in zip(images, entries)])


def train(out: Path, args) -> Path:
    adapter = out / "run" / "lora" / "adapter.safetensors"
    if adapter.is_file():
        return adapter
    command = [sys.executable, "-m", "difflab", "train", "--init-from", args.model, "--lora-rank", str(args.rank), "--lora-layers", args.layers,
               "--dataset", "folder", "--data-dir", str(out / "data"), "--resolution", "32",
               "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--lr-warmup", "20",
               "--lr-schedule", args.schedule, "--ema-decay", str(args.ema), "--max-minutes", str(args.minutes),
               "--max-steps", str(args.steps), "--threads", str(args.threads), "--seed", str(args.seed),
               "--out", str(out / "run")]
    print(" ".join(command[1:]), file=sys.stderr)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    print(f"trained in {time.perf_counter() - started:.0f} s (wall, loading included)", file=sys.stderr)
    return adapter


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the images, the run and the reports")
    parser.add_argument("--model", default="shapes", help="the base model: a package or a bundled model's name")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--concept", choices=("scenes", "singles", "mixed"), default="scenes",
                        help="what the concept images show (write_folder)")
    parser.add_argument("--repeats", type=int, default=1, help="each concept image counts this many times (kohya's "
                        "N_name folder), against the prior images' once")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--layers", default="all", help="what the LoRA adapts: all | attention | cross")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--ema", type=float, default=0.99)
    parser.add_argument("--schedule", default="constant", choices=("constant", "cosine"), help="the learning rate after warm-up")
    parser.add_argument("--steps", type=int, default=150, help="training steps (batch 16)")
    parser.add_argument("--minutes", type=float, default=15.0, help="at most this many training minutes (the issue's budget)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=2, help="seeds per new-concept prompt")
    parser.add_argument("--seed", type=int, default=0, help="another seed: another folder, prior images and training "
                        "run (a replicate); the evaluation's prompts and seeds stay the same")
    parser.add_argument("--limit", type=int, default=None, help="shapes-bench prompts (balanced); default all 540; "
                        "0: none (a quick look at the new concept alone)")
    parser.add_argument("--cyan-limit", type=int, default=150, help="bench prompts made cyan (balanced); 0: none")
    parser.add_argument("--prior", type=int, default=0, help="also train on N of the base model's own images "
                                                                 "of old prompts (prior preservation)")
    parser.add_argument("--prior-source", choices=("model", "renders"), default="model",
                        help="the prior images: the base model's samples, or the renderer's images of the same prompts")
    parser.add_argument("--results", type=Path, help="write every number as JSON here")
    parser.add_argument("--base-from", type=Path, help="take the base model's rows from this earlier --results file")
    args = parser.parse_args(argv)
    if not 1 <= args.repeats <= 1000:
        parser.error(f"--repeats must be in [1, 1000] (an image folder's N_name limit), got {args.repeats}")

    import torch
    from difflab.adapters.lora_files import read_lora_file
    from difflab.metrics.bench import balanced, bench_prompts
    from difflab.pipelines import Pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.out / "data"
    captions = None
    if not data.is_dir():
        captions = write_folder(data, args.images, seed=args.seed, kind=args.concept, repeats=args.repeats)
        if args.prior:
            write_prior(data, args.prior, seed=args.seed, model=args.model, source=args.prior_source)
    adapter = train(args.out, args)
    modules, _ = read_lora_file(adapter)
    size = {"file_bytes": adapter.stat().st_size, "parameters": sum(m.down.numel() + m.up.numel() for m in modules),
            "modules": len(modules)}

    concept = [{"prompt": p, "seed": s, "category": "cyan_single"} for s in range(args.seeds)
               for p in concept_prompts(COLOUR)]
    known = [{**e, "prompt": e["prompt"].replace(COLOUR, "blue"), "category": "blue_single"} for e in concept]
    bench = balanced(bench_prompts(), args.limit)
    cyan_bench = [{**e, "prompt": format_prompt(with_colour(_parse(e["prompt"]), COLOUR)), "held_out": False}
                  for e in balanced(bench_prompts(), args.cyan_limit)] if args.cyan_limit else []
    taught = tuple(PALETTE)
    results = {"adapter": str(adapter), "size": size, "captions": captions, "args": {k: str(v) for k, v in vars(args).items()}}
    if args.base_from:
        results["base"] = json.loads(args.base_from.read_text())["base"]
    for label, lora in (("base", None), ("lora", adapter)):
        if label in results:
            continue
        pipe = Pipeline.from_pretrained(args.model)
        if lora is not None:
            pipe.load_lora(str(lora), 1.0)
        row = {}
        for name, entries in (("cyan_single", concept), ("blue_single", known), ("bench", bench),
                              ("cyan_bench", cyan_bench if lora is not None else [])):
            if not entries:
                continue
            started = time.perf_counter()
            images = generate(pipe, entries)
            row[name] = {"taught": score(images, entries, taught), "seconds": round(time.perf_counter() - started, 1)}
            if name == "bench":
                row[name]["six_colour"] = score(images, entries)
            print(f"{label} {name}: {row[name]['taught']['overall']['accuracy']:.3f}", file=sys.stderr, flush=True)
        results[label] = row
    print_table(results)
    if args.results:
        args.results.write_text(json.dumps(results, indent=1))
    return 0


def _parse(prompt: str) -> Prompt:
    from difflab.data.shapes_grammar import parse_prompt
    return parse_prompt(prompt)


def print_table(results: dict) -> None:
    size = results["size"]
    print(f"adapter: {size['parameters']:,} parameters in {size['modules']} modules, "
          f"{size['file_bytes'] / 1e6:.2f} MB\n")
    print("| model | cyan single objects (taught oracle) | blue single objects | shapes-bench (taught) "
          "| shapes-bench (six colours) | " + " | ".join(COLUMNS) + " |")
    print("|---|---|---|---|---|" + "---|" * len(COLUMNS))
    for label in ("base", "lora"):
        row = results[label]
        cells = [f"{row[k]['taught']['overall']['accuracy']:.3f}" for k in ("cyan_single", "blue_single")]
        if "bench" in row:
            bench = row["bench"]["taught"]
            cells += [f"**{bench['overall']['accuracy']:.3f}**", f"{row['bench']['six_colour']['overall']['accuracy']:.3f}"]
            cells += [f"{bench[c]['accuracy']:.2f}" for c in COLUMNS]
        else:
            cells += [""] * (2 + len(COLUMNS))                            # --limit 0: no bench this run
        print(f"| {label} | " + " | ".join(cells) + " |")
    if "cyan_bench" in results["lora"]:
        table = results["lora"]["cyan_bench"]["taught"]
        print("\nLoRA on the bench with the first object made cyan: overall "
              f"{table['overall']['accuracy']:.3f}; " + ", ".join(f"{c} {table[c]['accuracy']:.2f}" for c in COLUMNS))


if __name__ == "__main__":
    sys.exit(main())
