"""Sampler, steps and guidance against prompt adherence, on chosen shapes-bench categories.

Each setting draws the same entries (shapes-bench's prompts of ``--categories``, each under ``--seeds``
seeds, as ``difflab eval --seeds`` does) and the oracle judges them; one JSON row per setting, with
every miss and its reasons. A quick way to choose a package's sampling defaults before running the
whole ``difflab eval`` on the winner.

    python benchmarks/sampler_adherence.py --model shapes-v2.1 --settings "deis:20:2,dpmpp_2m_sde:30:2"
    python benchmarks/sampler_adherence.py --categories single_object,two_objects --seeds 2 \\
        --settings "deis:40:2,euler_ancestral:30:2,dpmpp_2m_sde:20:2" --out benchmarks/results/x.json

A setting is SAMPLER:STEPS:GUIDANCE[:SPACING]; an empty field keeps the package's default ("::1.5",
"ddpm:50::trailing"). SPACING is one of difflab.settings.SPACINGS.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def parse_settings(text: str) -> list[dict]:
    """``SAMPLER:STEPS:GUIDANCE[:SPACING],...`` as pipeline keywords, every one checked before any model
    loads."""
    from difflab.settings import validate_settings
    settings = []
    for item in text.split(","):
        fields = item.split(":")
        try:
            if len(fields) > 4:
                raise ValueError("too many fields")
            sampler, steps, guidance, spacing = (fields + ["", "", ""])[:4]
            setting = {k: v for k, v in (("sampler", sampler or None), ("steps", int(steps) if steps else None),
                                         ("guidance_scale", float(guidance) if guidance else None),
                                         ("spacing", spacing or None)) if v is not None}
            validate_settings(setting.get("sampler", "deis"), setting.get("steps", 1), setting.get("spacing"),
                              setting.get("guidance_scale", 1.0))
        except ValueError as error:
            raise ValueError(f"--settings {item!r}: {error} (SAMPLER:STEPS:GUIDANCE[:SPACING])") from None
        settings.append(setting)
    return settings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes-v2.1", help="a package or a bundled model's name")
    parser.add_argument("--categories", default="single_object,two_objects")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--from-seed", type=int, default=0,
                        help="skip the first K of the --seeds seeds (add seeds to an earlier run's)")
    parser.add_argument("--settings", required=True, help="SAMPLER:STEPS:GUIDANCE[:SPACING],...")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from difflab.metrics.adherence import check
    from difflab.metrics.bench import bench_prompts, with_seeds
    from difflab.pipelines import Pipeline

    try:
        settings = parse_settings(args.settings)   # a bad setting fails before the model loads
    except ValueError as error:
        parser.error(str(error))
    categories = args.categories.split(",")
    if not 0 <= args.from_seed < args.seeds:
        parser.error(f"--from-seed must be in [0, --seeds), got {args.from_seed}")
    chosen = [e for e in bench_prompts() if e["category"] in categories]
    entries = with_seeds(chosen, args.seeds)[args.from_seed * len(chosen):]
    if not entries:
        parser.error(f"no shapes-bench entries in categories {categories}")
    pipe = Pipeline.from_pretrained(args.model)
    rows = []
    for setting in settings:
        started, verdicts = time.perf_counter(), []
        for start in range(0, len(entries), args.batch_size):
            batch = entries[start: start + args.batch_size]
            result = pipe([e["prompt"] for e in batch], seed=[e["seed"] for e in batch], **setting)
            verdicts += [check(image.convert("RGB"), e["prompt"]) for image, e in zip(result.images, batch)]
        accuracy = {c: sum(v["ok"] for v, e in zip(verdicts, entries) if e["category"] == c)
                    / sum(e["category"] == c for e in entries) for c in categories}
        misses = [[e["prompt"], e["seed"], [r["reason"] for r in v["requirements"] if not r["ok"]]]
                  for v, e in zip(verdicts, entries) if not v["ok"]]
        recipe = result.recipes[0]                 # the settings the pipeline used, defaults filled in
        rows.append({"settings": {k: recipe[k] for k in ("sampler", "steps", "guidance_scale", "spacing")},
                     "accuracy": accuracy, "n": {c: sum(e["category"] == c for e in entries) for c in categories},
                     "seconds": round(time.perf_counter() - started, 1), "misses": misses})
        print(json.dumps({k: rows[-1][k] for k in ("settings", "accuracy", "seconds")}), flush=True)
        if args.out:
            args.out.write_text(json.dumps({"model": args.model, "seeds": args.seeds, "from_seed": args.from_seed,
                                             "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
