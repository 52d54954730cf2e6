"""``difflab eval`` for video and audio models: generate two prompt sets, judge every output, report
rates per check and FD/KID against real samples.

Video (issue 17's goals: direction right >= 80%, identity >= 90%): the held-out (colour, shape,
direction) triples the training split never shows (``difflab.data.moving_shapes.held_out_prompts``)
and the canonical prompts of the test split, each clip judged by
:func:`difflab.metrics.motion.judge_clip` ("axis": :func:`difflab.metrics.motion.axis_right`, the asked
axis whichever way). Audio (pitch order >= 80%, chord notes >= 70%): the sounds world's held-out
prompts and test split, judged on the waveform the codec makes by :func:`difflab.metrics.pitch.judge_sound`.
Output ``i`` of a set has seed ``i``. Each set is also judged as real samples of the same prompts and
seeds (the judge's ceiling), and compared by :mod:`difflab.metrics.av_distances` with them (FD, KID);
real samples of other seeds give the floor those distances reach with this many samples.
"""

from __future__ import annotations

import time
from collections import defaultdict

MEDIA = ("video", "audio")
SETS = ("held-out", "test")


def prompt_sets(media: str, n: int, only: str | None = None) -> dict[str, list[str]]:
    """The first ``n`` held-out prompts and the first ``n`` test-split prompts; with ``only``, just the
    first ``n`` test-split prompts that contain it (e.g. ``" then "``: the audio sequences)."""
    if media == "video":
        from difflab.data.moving_shapes import MovingShapesDataset as Split
        from difflab.data.moving_shapes import held_out_prompts
    else:
        from difflab.data.sounds import SoundsDataset as Split
        from difflab.data.sounds import held_out_prompts
    test = Split("test")
    if only is None:
        return {"held-out": held_out_prompts(n), "test": [test[i]["prompt"] for i in range(n)]}
    chosen = [p for p in (test[i]["prompt"] for i in range(len(test))) if only in p][:n]
    if not chosen:
        raise ValueError(f"no test-split prompt contains {only!r}")
    return {f"test, only {only.strip()!r}": chosen}


def judge(media: str, output, prompt: str) -> dict:
    """The judge's verdict, with ``checks``: each check's outcome (None where the prompt does not state it)."""
    if media == "video":
        from difflab.metrics.motion import axis_right, judge_clip
        verdict = judge_clip(output, prompt)
        return {**verdict, "checks": {**verdict["checks"], "axis": axis_right(verdict, prompt)}}
    from difflab.metrics.pitch import judge_sound
    verdict = judge_sound(output, prompt)          # its "checks" are measurements; its requirements name a kind
    kinds = {}
    for r in verdict["requirements"]:
        kinds[r["check"]] = kinds.get(r["check"], True) and r["ok"]
    return {**verdict, "checks": kinds}


def real(media: str, prompt: str, seed: int):
    """A real sample of the world: the clip or sound ``prompt`` describes, drawn with ``seed``."""
    if media == "video":
        from difflab.data.moving_shapes import render
    else:
        from difflab.data.sounds import render
    return render(prompt, seed)


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


def feature_distances(media: str, reference: list, other: list) -> dict[str, float]:
    """FD and KID x 1000 between two lists of clips or sounds (:mod:`difflab.metrics.av_distances`); none
    for fewer than 2 a side (a covariance needs two)."""
    from difflab.metrics.av_distances import audio_features, distances, video_features
    if min(len(reference), len(other)) < 2:
        return {}
    features = video_features if media == "video" else audio_features
    d = distances(features(reference), features(other))
    return {"FD": d["fd"], "KIDx1000": 1000 * d["kid"]}


def evaluate_media(pipe, sets: dict[str, list[str]], batch_size: int = 8, progress: bool = True, **sampling) -> dict:
    """Rows ``{set: rates + FD/KID}`` and ``{set (real): ...}``, every verdict, and outputs per second.
    ``sampling``: the pipeline's keyword arguments (steps, sampler, guidance_scale, ...)."""
    from tqdm import tqdm

    media = pipe.codec.media
    rows, results, elapsed, made = {}, [], 0.0, 0
    with tqdm(total=sum(map(len, sets.values())), desc="generating", unit=media, disable=not progress) as bar:
        for name, prompts in sets.items():
            verdicts, ceiling, outputs, reals, floor = [], [], [], [], []
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start:start + batch_size]
                seeds = list(range(start, start + len(chunk)))
                began = time.perf_counter()
                result = pipe(chunk, seed=seeds, **sampling)
                elapsed, made = elapsed + time.perf_counter() - began, made + len(chunk)
                made_now = result.videos if media == "video" else result.audio
                verdicts += [judge(media, o, p) for o, p in zip(made_now, chunk)]
                drawn = [real(media, p, s) for p, s in zip(chunk, seeds)]
                ceiling += [judge(media, r, p) for r, p in zip(drawn, chunk)]
                outputs, reals = outputs + list(made_now), reals + drawn
                floor += [real(media, p, s + 1_000_000) for p, s in zip(chunk, seeds)]
                bar.update(len(chunk))
            rows[name] = {**rates(verdicts), **feature_distances(media, reals, outputs)}
            rows[f"{name} (real)"] = {**rates(ceiling), **feature_distances(media, reals, floor)}
            results += [{"set": name, "prompt": p, "seed": i, "ok": v["ok"], "checks": v["checks"],
                         "failed": [r.get("reason", "") for r in v["requirements"] if not r["ok"]]}
                        for i, (p, v) in enumerate(zip(prompts, verdicts))]
    return {"rows": rows, "sizes": {name: len(p) for name, p in sets.items()}, "results": results,
            "per_second": made / elapsed if elapsed else None}


def format_rows(rows: dict, sizes: dict) -> list[str]:
    """A Markdown table: one row per set, one column per check, then overall, FD and KID x 1000."""
    scores = ["FD", "KIDx1000"]
    checks = sorted({c for r in rows.values() for c in r} - {"overall", *scores}) + ["overall", *scores]
    lines = ["| prompts | " + " | ".join(checks) + " |", "|---|" + "---|" * len(checks)]
    for name, r in rows.items():
        n = sizes[name.removesuffix(" (real)")]
        lines.append(f"| {name} ({n}) | " + " | ".join(f"{r[c]:.2f}" if c in r else "-" for c in checks) + " |")
    return lines
