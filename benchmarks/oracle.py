"""Measure the shapes oracle and the FID/KID features; print Markdown for BENCHMARKS.md.

    python benchmarks/oracle.py [--n 1000] [--fid-n 1000]

Oracle: acceptance of real renders (clean, and after mild blur + noise) and rejection of the same images
checked against a prompt with one attribute changed, on the shapes test split (fixed seeds), at 32 and
64 pixels; plus real renders of every shapes-bench prompt. FID/KID: two disjoint real samples of the
val split, the shipped reference (test split), and real against the second sample blurred.
"""

from __future__ import annotations

import argparse
import time

import torch
from PIL import ImageFilter

from difflab.data.digits import DigitsDataset
from difflab.data.shapes import ShapesDataset, render
from difflab.metrics.adherence import check
from difflab.metrics.bench import bench_prompts, format_table, report
from difflab.metrics.distances import feature_name, fid, kid
from difflab.metrics.oracle_eval import Degradation, oracle_rates


def oracle_section(n: int) -> list[str]:
    lines = ["| resolution | damage | accept clean | accept damaged | reject colour | reject colour (damaged) "
             "| reject shape | reject cell | reject count | reject relation |", "|" + "---|" * 10]
    for resolution, damage in ((32, Degradation()), (64, Degradation()), (32, Degradation(0.8, 10 / 255))):
        r = oracle_rates(n, resolution, damage)
        cells = [f"{r[f'accept_{k}']:.3f} ({r[f'n_{k}']})" for k in ("clean", "degraded")]
        cells += [f"{r[f'reject_{k}']:.3f} ({r[f'n_{k}']})"
                  for k in ("colour", "colour_degraded", "shape", "cell", "count", "relation")]
        lines.append(f"| {resolution} | blur {damage.blur_radius} px@32, noise {damage.noise_std * 255:.0f}/255 | "
                     + " | ".join(cells) + " |")
    entries = bench_prompts()
    oks = [check(render(e["prompt"], e["seed"]), e["prompt"])["ok"] for e in entries]
    lines += ["", "Real renders of shapes-bench (every prompt, its own seed):", "```", format_table(report(entries, oks)),
              "```"]
    return lines


def _blur(images, radius):
    return [im.filter(ImageFilter.GaussianBlur(radius)) for im in images]


def fid_section(n: int) -> list[str]:
    data = ShapesDataset("val", length=2 * n)  # val: disjoint from the shipped reference (test split)
    images = [data[i]["image"] for i in range(2 * n)]
    a, b = images[:n], images[n:]
    digits = DigitsDataset("all")
    d = [digits[i]["image"] for i in range(len(digits))]
    da, db = d[: len(d) // 2], d[len(d) // 2:]
    rows = [("shapes", "real vs real", a, b), ("shapes", "real vs reference (shipped)", None, b)]
    rows += [("shapes", f"real vs blur {r}", a, _blur(b, r)) for r in (0.5, 1.0, 1.5)]
    rows += [("digits", "real vs real (halves)", da, db)]
    rows += [("digits", f"real vs blur {r}", da, _blur(db, r)) for r in (1.0, 2.0)]
    lines = ["| dataset | comparison | FID | KID (x1e3) | features |", "|---|---|---|---|---|"]
    for dataset, name, real, fake in rows:
        k_mean, k_std = kid(real, fake, dataset, subsets=50, subset_size=min(500, len(fake)))
        lines.append(f"| {dataset} | {name} | {fid(real, fake, dataset):.3f} | {1e3 * k_mean:.3f} +- {1e3 * k_std:.3f} "
                     f"| {feature_name(dataset)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="test-split items for the oracle rates")
    parser.add_argument("--fid-n", type=int, default=1000, help="images per side for FID")
    parser.add_argument("--skip-oracle", action="store_true", help="only the FID/KID table")
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.time()
    if not args.skip_oracle:
        print("\n".join(oracle_section(args.n)) + "\n")
    print("\n".join(fid_section(args.fid_n)))
    print(f"\n({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
