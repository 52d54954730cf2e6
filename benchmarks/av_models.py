"""Judge a video or audio model on prompts it was not trained on; print a Markdown table.

    python benchmarks/av_models.py video --model shapes-video [--n 48] [--steps 20] [--batch 8]
    python benchmarks/av_models.py audio --model sounds [--n 48] [--steps 20] [--batch 8]
    ... --n 0 --gallery docs/images     # only the README's gallery

Video (issue 17's goals: direction right >= 80%, identity >= 90%): two prompt sets, each clip with
its own seed: the held-out (colour, shape, direction) triples the training split never shows
(``difflab.data.moving_shapes.held_out_prompts``) and the canonical prompts of the test split. Each
clip is judged by :func:`difflab.metrics.motion.judge_clip`; a check counts where the prompt states it.

Audio (goals: pitch order >= 80%, chord notes >= 70%): the held-out prompts of the sounds world and
its test split, judged on the waveform the codec makes (Griffin-Lim) by
:func:`difflab.metrics.pitch.judge_sound`.

Also reported: the rate of the real clips of the same prompts (the judge's ceiling), clips per second,
and per set the Fréchet distance (FD) and KID x 1000 to the real clips on difflab's own clip or sound
features (:mod:`difflab.metrics.av_distances`; not FVD or FAD). On a "(real clips)" row they compare
the real clips with real clips of the same prompts and other seeds: the floor a perfect model would reach
with this many samples.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections import defaultdict

import torch

import difflab


def prompt_sets(kind: str, n: int, only: str | None = None) -> dict[str, list[str]]:
    """The held-out prompts and the first ``n`` test-split prompts; with ``only``, just the first ``n``
    test-split prompts that contain it (e.g. ``" then "``: the audio sequences, whose pitch order is a goal)."""
    if kind == "video":
        from difflab.data.moving_shapes import MovingShapesDataset, held_out_prompts
        test = MovingShapesDataset("test")
    else:
        from difflab.data.sounds import SoundsDataset, held_out_prompts
        test = SoundsDataset("test")
    if only is None:
        return {"held-out": held_out_prompts(n), "test": [test[i]["prompt"] for i in range(n)]}
    chosen = [p for p in (test[i]["prompt"] for i in range(len(test))) if only in p][:n]
    if not chosen:
        raise SystemExit(f"no test-split prompt contains {only!r}")
    return {f"test, only {only.strip()!r}": chosen}


def judge(kind: str, output, prompt: str) -> dict:
    if kind == "video":
        from difflab.metrics.motion import axis_right, judge_clip
        verdict = judge_clip(output, prompt)
        return {**verdict, "checks": {**verdict["checks"], "axis": axis_right(verdict, prompt)}}
    from difflab.metrics.pitch import judge_sound
    verdict = judge_sound(output, prompt)          # its "checks" are measurements; its requirements name a kind
    kinds = {}
    for r in verdict["requirements"]:
        kinds[r["check"]] = kinds.get(r["check"], True) and r["ok"]
    return {**verdict, "checks": kinds}


def real(kind: str, prompt: str, seed: int):
    if kind == "video":
        from difflab.data.moving_shapes import render
        return render(prompt, seed)
    from difflab.data.sounds import render
    return render(prompt, seed)


def feature_distances(kind: str, real_outputs: list, other_outputs: list) -> dict[str, float]:
    """FD and KID x 1000 between two lists of clips or sounds, on :mod:`difflab.metrics.av_distances` features."""
    from difflab.metrics.av_distances import audio_features, distances, video_features
    features = video_features if kind == "video" else audio_features
    d = distances(features(real_outputs), features(other_outputs))
    return {"FD": d["fd"], "KIDx1000": 1000 * d["kid"]}


def rates(verdicts: list[dict]) -> dict[str, float]:
    """Per check: the fraction of the verdicts that state it (not None) in which it held; plus overall."""
    held, stated = defaultdict(int), defaultdict(int)
    for v in verdicts:
        for name, ok in v["checks"].items():
            if ok is not None:
                stated[name] += 1
                held[name] += bool(ok)
    out = {name: held[name] / stated[name] for name in sorted(stated)}
    out["overall"] = sum(v["ok"] for v in verdicts) / len(verdicts)
    return out


GALLERY = {"video": ["a red circle moving right", "a blue square falling", "a green triangle bouncing",
                     "a yellow cross and a purple circle passing each other"],
           "audio": ["a C4 note on a flute", "a low note then a high note", "an A minor chord", "three clicks"]}


def gallery(kind: str, pipe, folder, seed: int = 0) -> None:
    """The README's pictures: four clips side by side as one looping GIF (4x, nearest) or the four
    spectrograms as one PNG, and each output as its own file with its recipe."""
    from pathlib import Path

    import numpy as np
    from PIL import Image
    from difflab.pipelines import media_files
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    result = pipe(GALLERY[kind], seed=seed)
    result.save(folder, prefix=kind)
    if kind == "video":
        row = np.concatenate([np.pad(v, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=255) for v in result.videos], 2)
        big = row.repeat(4, axis=1).repeat(4, axis=2)
        media_files.save_video(big, {"prompts": GALLERY[kind], "seed": seed}, folder / f"{kind}-gallery.gif",
                               overwrite=True)
    else:
        strips = [np.pad(np.asarray(im), 2, constant_values=255) for im in result.images]
        Image.fromarray(np.concatenate(strips, 1)).resize((4 * sum(s.shape[1] for s in strips), 4 * strips[0].shape[0]),
                                                          Image.NEAREST).save(folder / f"{kind}-gallery.png")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("video", "audio"))
    parser.add_argument("--model", required=True)
    parser.add_argument("--n", type=int, default=48, help="prompts per set")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the package's)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the package's)")
    parser.add_argument("--sampler", default=None, help="sampler (default: the package's)")
    parser.add_argument("--sets", default=None, help="judge only these prompt sets, comma-separated (held-out,test)")
    parser.add_argument("--only", default=None, help="judge only test-split prompts containing this text")
    parser.add_argument("--gallery", default=None, help="also write the README's gallery (GIF or PNG, and files) here")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(__import__("os").environ.get("THREADS", "2")))
    prompts_of = prompt_sets(args.kind, args.n, args.only) if args.n >= 1 else {}   # bad flags fail before loading
    if args.sets and prompts_of and not set(args.sets.split(",")) <= set(prompts_of):
        raise SystemExit(f"--sets takes names from {', '.join(prompts_of)}, got {args.sets!r}")
    if args.sets:
        prompts_of = {name: p for name, p in prompts_of.items() if name in args.sets.split(",")}
    pipe = difflab.Pipeline.from_pretrained(args.model)
    if args.gallery:
        gallery(args.kind, pipe, args.gallery)
    rows, elapsed, made = {}, 0.0, 0
    if not prompts_of:
        return
    for name, prompts in prompts_of.items():
        verdicts, ceiling, made_outputs, real_outputs, floor_outputs = [], [], [], [], []
        for start in range(0, len(prompts), args.batch):
            chunk = prompts[start:start + args.batch]
            seeds = list(range(start, start + len(chunk)))
            began = time.perf_counter()
            result = pipe(chunk, seed=seeds, steps=args.steps, guidance_scale=args.guidance, sampler=args.sampler)
            elapsed, made = elapsed + time.perf_counter() - began, made + len(chunk)
            outputs = result.videos if args.kind == "video" else result.audio
            verdicts += [judge(args.kind, o, p) for o, p in zip(outputs, chunk)]
            reals = [real(args.kind, p, s) for p, s in zip(chunk, seeds)]
            ceiling += [judge(args.kind, r, p) for r, p in zip(reals, chunk)]
            made_outputs, real_outputs = made_outputs + list(outputs), real_outputs + reals
            floor_outputs += [real(args.kind, p, s + 1_000_000) for p, s in zip(chunk, seeds)]
            print(f"{name}: {len(verdicts)}/{len(prompts)}", file=sys.stderr, flush=True)
        rows[name] = {**rates(verdicts), **feature_distances(args.kind, real_outputs, made_outputs)}
        rows[f"{name} (real clips)"] = {**rates(ceiling), **feature_distances(args.kind, real_outputs, floor_outputs)}
    only_flag = f" --only {args.only!r}" if args.only else ""
    scores = ["FD", "KIDx1000"]
    checks = sorted({c for r in rows.values() for c in r} - {"overall", *scores}) + ["overall", *scores]
    print(f"`python benchmarks/av_models.py {args.kind} --model {args.model} --n {args.n}"
          f"{f' --steps {args.steps}' if args.steps else ''}{only_flag}"
          f"{f' --guidance {args.guidance:g}' if args.guidance is not None else ''}"
          f"{f' --sampler {args.sampler}' if args.sampler else ''}{f' --sets {args.sets}' if args.sets else ''}` — {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}; {made / elapsed:.2f} clips/s\n")
    print("| prompts | " + " | ".join(checks) + " |")
    print("|---|" + "---|" * len(checks))
    for name, r in rows.items():
        print(f"| {name} ({len(prompts_of[name.removesuffix(' (real clips)')])}) | " + " | ".join(f"{r[c]:.2f}" if c in r else "-" for c in checks) + " |")


if __name__ == "__main__":
    main()
