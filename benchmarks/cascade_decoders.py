"""Decoders of a cascade, side by side on the same samples: a 32x32 model's images decoded to 64x64 by
bicubic upsampling and by trained area VAEs (``encoder="area"``), judged by the shapes oracle and FID.

    python benchmarks/cascade_decoders.py --base shapes --decoders A=runs/decA/model,B=runs/decB/model \
        [--limit 150] [--out results.json] [--speed CASCADE_PACKAGE]

The base model samples each prompt once (its own seed, package defaults); its 8-bit images are the
latents (an area VAE's latent is the image pooled to the base's size; rounding moves them by at most
half a level). Every decoder decodes the same latents; ``bicubic`` is an untrained area VAE, whose
decoder starts as exactly bicubic upsampling. Rows: the base's own 32x32 images (oracle at 32x32, FID
against 32x32 renders) and each decoder's 64x64 images (FID against 64x64 renders of the same prompts
and seeds); decoding time per image on this machine. ``--speed PACKAGE`` also times the README's job
(4 images of "a red circle above a blue square", the package defaults, best of 3) for the base and for
the cascade package, taking turns in this one process.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from difflab.data import to_images, to_tensor
from difflab.data.shapes import render
from difflab.metrics.adherence import check
from difflab.metrics.bench import CATEGORIES, balanced, bench_prompts, report
from difflab.metrics.distances import fid
from difflab.models.vae import AutoencoderKL, AutoencoderKLConfig
from difflab.pipelines import Pipeline


def bicubic(channels: int) -> AutoencoderKL:
    """An untrained area VAE: its decoder's correction is zero, so it decodes by bicubic upsampling."""
    config = AutoencoderKLConfig(in_channels=channels, latent_channels=channels, channels=(32, 64), mid_attention=False,
                                 encoder="area")
    return AutoencoderKL(config=config).eval()


def scores(images, entries) -> dict:
    """Oracle accuracy per category and overall (the category mean, as ``difflab eval`` reports it)."""
    table = report(entries, [check(image, entry["prompt"])["ok"] for image, entry in zip(images, entries)])
    return {name: row["accuracy"] for name, row in table.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="shapes")
    parser.add_argument("--decoders", default="", help="NAME=VAE_PACKAGE,... (bicubic is always included)")
    parser.add_argument("--limit", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--speed", default=None, help="a cascade package to time against the base")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    decoders = {}
    for item in filter(None, args.decoders.split(",")):
        name, _, path = item.partition("=")
        decoders[name] = AutoencoderKL.from_pretrained(path).eval().requires_grad_(False)
    pipe = Pipeline.from_pretrained(args.base)
    decoders = {"bicubic": bicubic(pipe.codec.channels), **decoders}
    for name, vae in decoders.items():
        if vae.config.encoder != "area":
            raise SystemExit(f"{name}: not an area VAE (encoder={vae.config.encoder!r})")

    entries = balanced(bench_prompts(), args.limit)
    small = []
    for start in range(0, len(entries), args.batch):
        batch = entries[start:start + args.batch]
        small += pipe([e["prompt"] for e in batch], seed=[e["seed"] for e in batch]).images
    size = pipe.resolution
    rows = {f"{args.base} at {size}x{size}": {**scores(small, entries), "fid": fid(
        [render(e["prompt"], e["seed"], size) for e in entries], small, "shapes")}}
    latents = to_tensor(small)
    for name, vae in decoders.items():
        f = vae.config.downscale
        start = time.perf_counter()
        with torch.inference_mode():
            large = to_images(torch.cat([vae.decode(z).clamp(-1, 1) for z in latents.split(args.batch)]))
        seconds = (time.perf_counter() - start) / len(large)
        real = [render(e["prompt"], e["seed"], size * f) for e in entries]
        rows[f"{name} to {size * f}x{size * f}"] = {**scores(large, entries), "fid": fid(real, large, "shapes"),
                                                    "decode_ms_per_image": 1000 * seconds}
    columns = ["overall", *CATEGORIES, "fid", "decode_ms_per_image"]
    print("| row | " + " | ".join(columns) + " |\n|" + "---|" * (len(columns) + 1))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" if c in row else "" for c in columns) + " |")
    speed = timings(pipe, Pipeline.from_pretrained(args.speed)) if args.speed else {}
    for name, seconds in speed.items():
        print(f"{name}: {seconds:.2f} s for 4 images")
    if args.out:
        Path(args.out).write_text(json.dumps({"base": args.base, "n": len(entries), "rows": rows, "speed": speed,
                                              "threads": args.threads}, indent=1))


def timings(base, stacked, repeats: int = 3) -> dict:
    """Best-of-``repeats`` seconds for the README's 4 images, the two pipelines taking turns."""
    best = {"base": float("inf"), "cascade": float("inf")}
    for _ in range(repeats):
        for name, pipe in (("base", base), ("cascade", stacked)):
            start = time.perf_counter()
            pipe("a red circle above a blue square", num_images=4, seed=0)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


if __name__ == "__main__":
    main()
