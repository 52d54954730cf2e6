"""Measure the motion judge: accept real moving-shapes clips, reject clips whose prompt is changed; print Markdown.

    python benchmarks/judge_motion.py [--n 300] [--resolution 32] [--frames 8]

Clips are the first ``n`` items of the moving-shapes test split (canonical prompts, fixed seeds). Each is
judged against its own prompt (accept), against the prompt with one attribute changed (reject: colour
or shape of one object, direction, speed word, background, motion kind, object count), and, changed
itself, against its own prompt (reject: played backwards, frozen on its first frame, uniform noise).
Issue 17's goals: accept >= 99% of real clips, reject >= 95% of every kind of change.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import defaultdict
from dataclasses import replace

import numpy as np
from PIL import Image, ImageFilter

from difflab.data.moving_shapes import MovingShapesDataset, render_clip
from difflab.data.moving_shapes_grammar import DIRECTIONS, MotionPrompt, format_motion, parse_motion
from difflab.data.shapes_grammar import BACKGROUNDS, COLOURS, SHAPES, ObjectSpec
from difflab.metrics.motion import judge, observe

ACCEPT_GOAL, REJECT_GOAL = 0.99, 0.95


def _other(rng: random.Random, choices, current):
    return rng.choice([c for c in choices if c != current])


def _change_object(p: MotionPrompt, attribute: str, rng: random.Random) -> MotionPrompt:
    k = rng.randrange(len(p.objects))
    spec = p.objects[k]
    values = tuple(COLOURS) if attribute == "colour" else SHAPES
    changed = replace(spec, **{attribute: _other(rng, values, getattr(spec, attribute))})
    return replace(p, objects=p.objects[:k] + (changed,) + p.objects[k + 1:])


def changed_prompts(p: MotionPrompt, rng: random.Random) -> dict[str, MotionPrompt]:
    """The prompt with one attribute changed, for every change that applies to its kind."""
    out = {"colour": _change_object(p, "colour", rng), "shape": _change_object(p, "shape", rng),
           "speed": replace(p, speed=_other(rng, ("slowly", "quickly"), p.speed)),
           "background": replace(p, background=_other(rng, tuple(BACKGROUNDS), p.background or "white"))}
    if p.kind == "move":
        out["direction"] = replace(p, direction=_other(rng, DIRECTIONS, p.direction))
        out["kind (moving -> bouncing)"] = replace(p, kind="bounce", direction=None)
        other = ObjectSpec(rng.choice(SHAPES), rng.choice(tuple(COLOURS)))
        out["count (1 object -> 2 passing)"] = replace(p, kind="pass", direction=None, objects=(p.objects[0], other))
    elif p.kind == "bounce":
        out["kind (bouncing -> moving)"] = replace(p, kind="move", direction=rng.choice(DIRECTIONS))
    else:
        out["count (2 passing -> 1 moving)"] = replace(p, kind="move", objects=p.objects[:1],
                                                       direction=rng.choice(("left", "right")))
    return out


def damaged(video: np.ndarray, rng: np.random.Generator, blur: float = 0.6, noise: float = 6 / 255) -> np.ndarray:
    """Mild blur (pixels at 32 x 32, scaled) and Gaussian noise, as a model's output might show."""
    radius = blur * video.shape[2] / 32
    soft = np.stack([np.asarray(Image.fromarray(f).filter(ImageFilter.GaussianBlur(radius))) for f in video])
    return np.clip(soft + rng.normal(0, noise * 255, soft.shape), 0, 255).round().astype(np.uint8)


def measure(n: int, resolution: int, frames: int) -> tuple[dict, list[str]]:
    """Rates per row (``{row: [bools]}``) and the prompts of failures, for inspection."""
    data = MovingShapesDataset("test", resolution, frames=frames)
    rows, failures = defaultdict(list), []
    rng, noise_rng = random.Random("judge-motion-bench"), np.random.default_rng(0)

    def record(row: str, verdict: dict, want: bool):
        rows[row].append(verdict["ok"] == want)
        if verdict["ok"] != want:
            failures.append(f"{row}: {verdict['prompt']!r}: "
                            + "; ".join(f"{r['requirement']}: {r['reason']}" for r in verdict["requirements"]
                                        if not r["ok"] or not want))
    for i in range(n):
        clip, prompt = data.clip(i)
        p = parse_motion(prompt)
        video = render_clip(clip, resolution, frames)
        seen = observe(video)
        verdict = judge(seen, prompt)
        record("real", verdict, True)
        record(f"real ({p.kind})", verdict, True)
        record("real, damaged (blur 0.6 px + noise 6/255)", judge(observe(damaged(video, noise_rng)), prompt), True)
        for row, changed in changed_prompts(p, rng).items():
            record(row, judge(seen, format_motion(changed)), False)
        if p.kind == "move":
            record("played backwards (moving)", judge(observe(video[::-1]), prompt), False)
        record("frozen (first frame repeated)", judge(observe(np.repeat(video[:1], frames, axis=0)), prompt), False)
        noise = noise_rng.integers(0, 256, video.shape, dtype=np.uint8)
        record("uniform noise", judge(observe(noise), prompt), False)
    return rows, failures


def table(rows: dict) -> list[str]:
    lines = ["| clips judged | n | rate | goal |", "|---|---|---|---|"]
    first = ("real", "real (move)", "real (bounce)", "real (pass)")
    for row in sorted(rows, key=lambda r: (first + (r,)).index(r)):
        values = rows[row]
        accept = row.startswith("real")
        goal = f"accept >= {ACCEPT_GOAL:.0%}" if accept and "damaged" not in row else (
            "(informative)" if accept else f"reject >= {REJECT_GOAL:.0%}")
        verb = "accepted" if accept else "rejected"
        lines.append(f"| {row} | {len(values)} | {np.mean(values):.3f} {verb} | {goal} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="test-split clips")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--show-failures", type=int, default=10, help="print this many failures")
    args = parser.parse_args()
    start = time.time()
    rows, failures = measure(args.n, args.resolution, args.frames)
    print(f"`python benchmarks/judge_motion.py {' '.join(sys.argv[1:])}`".replace(" `", "`") + "\n")
    print("\n".join(table(rows)))
    if failures:
        shown = failures[: args.show_failures]
        print(f"\n{len(failures)} wrong verdicts" + (f"; the first {len(shown)}:" if shown else ""))
        print("\n".join(f"- {f}" for f in shown))
    print(f"\n({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
