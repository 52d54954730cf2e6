"""Quality of a trained shapes model against sampling steps, for the main samplers (and guidance).

    python benchmarks/model_quality.py [MODEL] [--every 5] [--samplers deis,dpmpp_2m,unipc,euler,heun]
                                       [--steps 5,10,20,40] [--guidance 3] [--out FILE.json]

Every ``--every``-th shapes-bench entry (108 of 540 by default, all six categories) is generated
with its own seed for each sampler and step count and judged by the adherence oracle; the table
gives overall accuracy and the position/relation columns, with the model evaluations (NFE) each
setting spends per image (x2 for classifier-free guidance, which runs in one batched forward).
``--guidance 1.5,3,5`` sweeps the guidance scale at the model's default sampler and steps instead.
"""

from __future__ import annotations

import argparse
import json
import time

from difflab.metrics.adherence import check
from difflab.metrics.bench import CATEGORIES, bench_prompts, report
from difflab.pipelines import Pipeline
from difflab.samplers import SAMPLER_INFO


def score(pipe: Pipeline, entries: list[dict], batch: int = 27, **settings) -> dict:
    """Accuracy per category and overall (their mean, as ``difflab eval``) of ``entries`` made with ``settings``."""
    oks = []
    for start in range(0, len(entries), batch):
        chunk = entries[start: start + batch]
        images = pipe([e["prompt"] for e in chunk], seed=[e["seed"] for e in chunk], **settings).images
        oks += [check(image, entry["prompt"])["ok"] for image, entry in zip(images, chunk)]
    return {name: row["accuracy"] for name, row in report(entries, oks).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None, help="model package (default: the bundled model)")
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--samplers", default="deis,dpmpp_2m,unipc,euler,heun")
    parser.add_argument("--steps", default="5,10,20,40")
    parser.add_argument("--guidance", default=None, help="comma list: sweep guidance at the default sampler")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    pipe = Pipeline.from_pretrained(args.model)
    entries = bench_prompts()[:: args.every]
    rows, started = [], time.perf_counter()
    if args.guidance:
        settings = [dict(guidance_scale=float(g)) for g in args.guidance.split(",")]
    else:
        settings = [dict(sampler=s, steps=int(n)) for s in args.samplers.split(",") for n in args.steps.split(",")]
    for setting in settings:
        t0 = time.perf_counter()
        result = score(pipe, entries, **setting)
        steps = setting.get("steps", pipe.defaults["steps"])
        nfe = SAMPLER_INFO[setting.get("sampler", pipe.defaults["sampler"])].evals(steps)
        rows.append({**setting, "nfe": nfe, **result, "seconds": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
    columns = ["overall", *CATEGORIES]
    keys = list(settings[0])
    print(f"\n{len(entries)} shapes-bench prompts (every {args.every}th), {time.perf_counter() - started:.0f} s\n")
    print("| " + " | ".join(keys + ["NFE"] + columns) + " |")
    print("|" + "---|" * (len(keys) + 1 + len(columns)))
    for row in rows:
        cells = [str(row[k]) for k in keys] + [str(row["nfe"])] + [f"{row.get(c, float('nan')):.2f}" for c in columns]
        print("| " + " | ".join(cells) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": args.model or "bundled", "prompts": len(entries), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
