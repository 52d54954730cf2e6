"""First-block caching on a transformer package: speed against quality, side by side in one process;
print Markdown.

    python benchmarks/block_cache.py --model runs/cmp/dit/model [--thresholds 0.05,0.1,0.2,0.4] [--n 16]

Every row makes the same ``n`` outputs (the first ``n`` test-split prompts of the package's world, seed
= index, the package's sampler and steps) with ``block_cache`` at one threshold (off: the plain
network). Reported: the share of network evaluations that ran every block, outputs per second and the
speed-up over the plain row (each row timed after one warm-up batch, in the same process), the
difference from the plain outputs (mean absolute, in 8-bit levels, and PSNR), and a distance to real
samples of the same prompts: FID on difflab's shapes features for an image model, the clip FD of
:mod:`difflab.metrics.av_distances` for a video model.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import numpy as np
import torch

import difflab
from difflab.models.block_cache import BlockCacheState


def prompts_and_reals(pipe, n: int):
    if pipe.codec.media == "video":
        from difflab.data.moving_shapes import MovingShapesDataset, render
        data = MovingShapesDataset("test")
        prompts = [data[i]["prompt"] for i in range(n)]
        return prompts, [render(p, i) for i, p in enumerate(prompts)]
    from difflab.data.shapes import ShapesDataset
    data = ShapesDataset("test", resolution=pipe.resolution)
    items = [data[i] for i in range(n)]
    return [item["prompt"] for item in items], [item["image"] for item in items]


def outputs_of(result) -> list[np.ndarray]:
    return result.videos if result.videos is not None else [np.asarray(im.convert("RGB")) for im in result.images]


def distance(media: str, reals, fakes) -> float:
    if media == "video":
        from difflab.metrics.av_distances import distances, video_features
        return distances(video_features(reals), video_features(fakes))["fd"]
    from PIL import Image
    from difflab.metrics import fid
    return fid(reals, [Image.fromarray(f) for f in fakes])


def run(pipe, prompts, threshold, batch: int):
    """(outputs, seconds, share of evaluations that ran every block)."""
    full = cached = 0
    original = BlockCacheState.store

    def counting_store(self, first, rest):
        nonlocal full
        full += 1
        original(self, first, rest)
    outs, seconds = [], 0.0
    BlockCacheState.store = counting_store
    try:
        pipe(prompts[:batch], seed=list(range(batch)), block_cache=threshold)       # warm-up
        full = 0
        for start in range(0, len(prompts), batch):
            chunk = prompts[start:start + batch]
            began = time.perf_counter()
            result = pipe(chunk, seed=list(range(start, start + len(chunk))), block_cache=threshold)
            seconds += time.perf_counter() - began
            outs += outputs_of(result)
            cached += pipe.defaults["steps"] * math.ceil(len(chunk) / batch)
    finally:
        BlockCacheState.store = original
    return outs, seconds, (full / cached if threshold is not None else 1.0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a DiT or MMDiT package (image or video)")
    parser.add_argument("--thresholds", default="0.05,0.1,0.2,0.4")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    for t in thresholds:
        BlockCacheState(t)                                   # bad thresholds fail before anything loads
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    pipe = difflab.Pipeline.from_pretrained(args.model)
    prompts, reals = prompts_and_reals(pipe, args.n)
    rows, plain, plain_s = [], None, None
    for threshold in [None, *thresholds]:
        outs, seconds, share = run(pipe, prompts, threshold, args.batch)
        if plain is None:
            plain, plain_s = outs, seconds
        diff = np.mean([np.abs(a.astype(float) - b.astype(float)).mean() for a, b in zip(outs, plain)])
        mse = np.mean([((a.astype(float) - b.astype(float)) ** 2).mean() for a, b in zip(outs, plain)])
        psnr = "-" if mse == 0 else f"{10 * math.log10(255 ** 2 / mse):.1f}"
        rows.append(f"| {'off' if threshold is None else threshold} | {share:.2f} | {len(outs) / seconds:.2f} | "
                    f"{plain_s / seconds:.2f}x | {diff:.2f} | {psnr} | {distance(pipe.codec.media, reals, outs):.2f} |")
    kind = "clip FD (av_distances)" if pipe.codec.media == "video" else "FID (difflab shapes features)"
    print(f"`python benchmarks/block_cache.py --model {args.model} --thresholds {args.thresholds} --n {args.n}` — "
          f"{platform.machine()}, {torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}; "
          f"{pipe.defaults['sampler']}, {pipe.defaults['steps']} steps, guidance {pipe.defaults['guidance_scale']}\n")
    print(f"| block_cache | evaluations with every block | outputs/s | speed | mean abs diff from off (0-255) "
          f"| PSNR vs off (dB) | {kind} |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
