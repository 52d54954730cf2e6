"""Guidance methods on one model: plain CFG at several scales against APG, CFG-Zero* and CFG++ (issue 16, item 2).

Each setting generates the same balanced sample of shapes-bench (same prompts and seeds) and is scored
by the oracle (accuracy per category) and FID/KID on difflab's shapes features, as ``difflab eval``
does; the table goes to stdout and, with ``--out``, the reports to JSON.

    python benchmarks/guidance.py                            # the bundled model, 150 prompts (~12 min)
    python benchmarks/guidance.py --model runs/v2/model --limit 540 --out benchmarks/results/guidance.json
    python benchmarks/guidance.py --sampler euler --settings cfg:2,cfg:3,cfg_pp:0.4,cfg_pp:0.7,cfg_pp:1

CFG++ (``cfg_pp``) takes a scale in [0, 1] and the euler or ddim sampler, so compare it with plain CFG
on the same ``--sampler``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = [("cfg", 2.0), ("cfg", 3.0), ("cfg", 4.5), ("cfg", 6.0), ("apg", 3.0), ("apg", 4.5), ("apg", 6.0),
            ("cfg_zero_star", 3.0), ("cfg_zero_star", 4.5)]
COLUMNS = ("single_object", "two_objects", "counting", "colours", "position", "relation")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes", help="a package or a bundled model's name")
    parser.add_argument("--limit", type=int, default=150)
    parser.add_argument("--settings", help="METHOD:SCALE,... (default: the table above)")
    parser.add_argument("--sampler", help="every row's sampler (default: the package's; cfg_pp needs euler or ddim)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from difflab.metrics.evaluation import EvalConfig, evaluate

    settings = SETTINGS if not args.settings else [(m, float(s)) for m, s in
                                                   (item.split(":") for item in args.settings.split(","))]
    rows, reports = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for method, scale in settings:
            started = time.perf_counter()
            report = evaluate(EvalConfig(args.model, sampler=args.sampler, limit=args.limit, guidance_scale=scale,
                                         guidance_method=method,
                                         out=str(Path(tmp) / f"{method}-{scale}.json")), progress=False)
            table, fid = report["table"], report["distances"]["fid"]
            rows.append(f"| {method} | {scale:g} | **{table['overall']['accuracy']:.3f}** | "
                        + " | ".join(f"{table[c]['accuracy']:.2f}" for c in COLUMNS) + f" | {fid:.2f} |")
            reports[f"{method}:{scale:g}"] = {"table": table, "distances": report["distances"],
                                              "seconds": time.perf_counter() - started}
            print(rows[-1], file=sys.stderr, flush=True)
    print(f"model {args.model}, {args.limit} prompts of shapes-bench, sampler {args.sampler or 'of the package'}, "
          "the package's steps\n")
    print("| method | scale | overall | " + " | ".join(COLUMNS) + " | FID |")
    print("|---|---|---|" + "---|" * len(COLUMNS) + "---|")
    print("\n".join(rows))
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "limit": args.limit, "sampler": args.sampler,
                                        "reports": reports}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
