"""What the video and audio distances see: FD and KID of real clips against real clips, and against
clips damaged in known ways; print Markdown.

    python benchmarks/av_distances.py [--n 40 --n 200] [--iterations 32]

The reference is the first ``n`` prompts of each world's test split, each rendered with seed = its index
(what ``benchmarks/av_models.py`` compares a model's outputs with). Each row renders the same prompts
another way: with other seeds (the floor: what a perfect model would score with ``n`` samples), or
damaged. Features: :mod:`difflab.metrics.av_distances` (not FVD or FAD). Both distances are
unconditional, as FID is: they compare two sets of clips and cannot tell which prompt a clip answers,
so a set played backwards, where "left" becomes "right", is still a set of plausible clips.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from difflab.data import moving_shapes, sounds
from difflab.metrics.av_distances import AUDIO_FEATURES, VIDEO_FEATURES, audio_features, distances, video_features


def video_rows(prompts: list[str]) -> dict[str, list[np.ndarray]]:
    from judge_motion import damaged                   # benchmarks/judge_motion.py: blur + noise, as a model's output
    rng = np.random.default_rng(0)
    other = [moving_shapes.render(p, 1_000_000 + i) for i, p in enumerate(prompts)]
    return {
        "real, other seeds (the floor)": other,
        "blur 0.6 px + noise 6/255": [damaged(c, rng) for c in other],
        "frames in random order": [c[rng.permutation(len(c))] for c in other],
        "frozen on the first frame": [np.repeat(c[:1], len(c), 0) for c in other],
        "played backwards": [c[::-1].copy() for c in other],
        "every red object drawn blue": [moving_shapes.render(p.replace("red", "blue"), 1_000_000 + i)
                                        for i, p in enumerate(prompts)],
    }


def audio_rows(prompts: list[str], iterations: int) -> dict[str, list[np.ndarray]]:
    from judge_sounds import round_trip                # benchmarks/judge_sounds.py: the codec's Griffin-Lim
    rng = np.random.default_rng(0)
    other = [sounds.render(p, 1_000_000 + i) for i, p in enumerate(prompts)]
    stacked = np.stack(other)
    return {
        "real, other seeds (the floor)": other,
        f"through the codec (log-mel, Griffin-Lim {iterations})": list(round_trip(stacked, iterations)),
        "codec, spectrogram + N(0, 0.1^2)": list(round_trip(stacked, iterations, sigma=0.1)),
        "white noise added (-26 dBFS)": [w + 0.05 * rng.standard_normal(w.shape).astype(np.float32) for w in other],
        "played backwards": [w[::-1].copy() for w in other],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, action="append", help="set sizes (repeatable; default 40 and 200)")
    parser.add_argument("--iterations", type=int, default=32, help="Griffin-Lim iterations of the codec rows")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    sizes = args.n or [40, 200]
    if min(sizes) < 4:
        raise SystemExit(f"--n must be at least 4 (a covariance and KID subsets), got {min(sizes)}")
    torch.set_num_threads(args.threads)
    start = time.time()
    print(f"`python benchmarks/av_distances.py {' '.join(sys.argv[1:] if argv is None else argv)}`".replace(" `", "`")
          + f" — {time.strftime('%Y-%m-%d')}\n")
    for kind, world, features, rows_of, name in (
            ("video", moving_shapes.MovingShapesDataset("test"), video_features, video_rows, VIDEO_FEATURES),
            ("audio", sounds.SoundsDataset("test"), audio_features,
             lambda p: audio_rows(p, args.iterations), AUDIO_FEATURES)):
        table: dict[str, list[str]] = {}
        for n in sizes:
            prompts = [world[i]["prompt"] for i in range(n)]
            render = moving_shapes.render if kind == "video" else sounds.render
            reference = features([render(p, i) for i, p in enumerate(prompts)])
            for row, outputs in rows_of(prompts).items():
                d = distances(reference, features(outputs))
                table.setdefault(row, []).append(f"{d['fd']:.2f} | {1000 * d['kid']:.1f} ± {1000 * d['kid_std']:.1f}")
        print(f"**{kind}** ({name}); FD | KID x 1000 ± std over subsets, for n = {', '.join(map(str, sizes))}\n")
        print("| clips | " + " | ".join(f"FD (n={n}) | KID x 1000 (n={n})" for n in sizes) + " |")
        print("|---|" + "---|---|" * len(sizes))
        for row, cells in table.items():
            print(f"| {row} | " + " | ".join(cells) + " |")
        print()
    print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
