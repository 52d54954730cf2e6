"""The motion judge: does a clip show what its moving-shapes prompt says?

``judge_clip(frames, prompt)`` parses the prompt with the moving-shapes grammar
(``difflab.data.moving_shapes_grammar``) and then

1. scans every frame with the shapes world's detector (``difflab.metrics.detect.scan``) and refuses
   a clip with any frame that is not a scene (noise, clutter, blank; the shapes oracle's gate,
   ``difflab.metrics.adherence.scene_validity``);
2. links the objects over time (identity tracking): between consecutive frames that hold the asked
   number of objects, the assignment of detections to tracks with the least total centroid motion
   (exhaustive over permutations: one or two objects). Tracks are followed by position only, so an
   object that changes colour or shape mid-clip stays one track and fails the identity check;
3. tests each requirement: the count (exactly the asked number of objects in every frame), identity
   (every track keeps its colour and shape, never jumps), colour and shape (each track's majority
   label, matched to the prompt's objects), the motion (net displacement along the asked axis with
   its sign and no turning back; for bouncing a reversal; for passing two objects moving in opposite x
   directions whose x order swaps), the speed when the prompt states one (mean displacement per
   reference frame bucketed by the midpoints between the world's speeds), and the background when
   stated.

Centroids come from coverage unmixing and are sub-pixel exact, which makes the thresholds below
generous for rendered clips; ``benchmarks/judge_motion.py`` measures acceptance and rejection rates.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import permutations

import numpy as np
from PIL import Image

from difflab.data.moving_shapes import DIRECTION_VECTORS, DURATION, SPEEDS
from difflab.data.moving_shapes_grammar import MotionPrompt, format_object, parse_motion
from difflab.data.shapes_grammar import BACKGROUNDS
from difflab.metrics.adherence import scene_validity
from difflab.metrics.detect import Detection, scan

MIN_TRAVEL = 0.10  # net displacement (image sides) that counts as moving; a slow rendered clip moves 0.21
MAX_ACROSS = 0.5   # displacement across the asked axis may be at most half the displacement along it
MIN_LEG = 0.04     # a reversal goes out and back at least this far; a slow rendered bounce: >= 0.06 each way
MIN_SWAP_GAP = 0.03  # passing: the x gap at the first and at the last frame, opposite in sign
MAX_STEP = 0.25    # a track moving further than this per reference frame has jumped to another object
# Speed buckets: geometric means between neighbouring speeds (0.042 and 0.073 image sides per reference frame)
SPEED_LIMITS = ((SPEEDS["slowly"] * SPEEDS["normal"]) ** 0.5, (SPEEDS["normal"] * SPEEDS["quickly"]) ** 0.5)
CHECKS = ("count", "identity", "colour", "shape", "direction", "speed", "background")


def as_video(frames) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` array, list of PIL images, or float tensor ``[3, T, H, W]`` in [-1, 1] -> uint8 array."""
    if isinstance(frames, (list, tuple)) and frames and all(isinstance(f, Image.Image) for f in frames):
        if len({f.size for f in frames}) != 1:
            raise ValueError("all frames of a clip must have one size")
        video = np.stack([np.asarray(f.convert("RGB")) for f in frames])
    elif type(frames).__module__.startswith("torch") and frames.ndim == 4 and frames.shape[0] == 3:
        import torch

        x = frames.detach().float().cpu()
        if not torch.isfinite(x).all():
            raise ValueError("the clip holds non-finite values")
        video = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()  # (T, H, W, 3)
    elif isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[3] == 3:
        video = frames
    else:
        shape = getattr(frames, "shape", None)
        got = type(frames).__name__ + (f" of shape {tuple(shape)}" if shape is not None else "")
        raise ValueError(f"frames must be a uint8 array [T, H, W, 3], a list of PIL images or a float tensor "
                         f"[3, T, H, W] in [-1, 1]; got {got}")
    if video.shape[0] < 3:
        raise ValueError(f"a clip needs at least 3 frames to show motion, got {video.shape[0]}")
    return video


@dataclass(frozen=True)
class Observation:
    """What the detector sees in each frame of a clip (prompt-independent, so one scan serves many prompts)."""

    detections: tuple[tuple[Detection, ...], ...]
    validity: tuple[dict, ...]     # scene_validity of each frame
    background: np.ndarray         # median background colour over frames, RGB in [0, 1]

    @property
    def frames(self) -> int:
        return len(self.detections)


def observe(frames) -> Observation:
    """Scan every frame of a clip (any form ``as_video`` accepts)."""
    scans = [scan(frame) for frame in as_video(frames)]
    return Observation(tuple(tuple(s.detections) for s in scans), tuple(scene_validity(s) for s in scans),
                       np.median([s.background for s in scans], axis=0))


@dataclass(frozen=True)
class Track:
    """One object followed through the frames ``times`` (reference frames) that hold the asked count."""

    times: tuple[float, ...]
    detections: tuple[Detection, ...]

    @property
    def xy(self) -> np.ndarray:
        return np.array([(d.x, d.y) for d in self.detections])  # (frames, 2)

    def label(self, attribute: str) -> str | None:
        return Counter(getattr(d, attribute) for d in self.detections).most_common(1)[0][0]

    def name(self) -> str:
        return f"{self.label('colour') or 'uncoloured'} {self.label('shape')}"


def link(observation: Observation, n: int) -> list[Track]:
    """Follow ``n`` objects through the frames holding exactly ``n`` detections, by least total motion."""
    kept = [t for t, found in enumerate(observation.detections) if len(found) == n]
    if not kept:
        return []
    chains = [[d] for d in observation.detections[kept[0]]]
    for t in kept[1:]:
        last = [chain[-1] for chain in chains]
        order = min(permutations(observation.detections[t]),
                    key=lambda found: sum(np.hypot(a.x - b.x, a.y - b.y) for a, b in zip(last, found)))
        for chain, d in zip(chains, order):
            chain.append(d)
    times = tuple(DURATION * t / (observation.frames - 1) for t in kept)
    return [Track(times, tuple(chain)) for chain in chains]


def speed_name(speed: float) -> str:
    return "slowly" if speed < SPEED_LIMITS[0] else "normal" if speed < SPEED_LIMITS[1] else "quickly"


def track_speed(track: Track) -> float:
    """Mean displacement per reference frame: path length over elapsed time."""
    path = np.linalg.norm(np.diff(track.xy, axis=0), axis=1).sum()
    return float(path / (track.times[-1] - track.times[0]))


def turns(values: np.ndarray) -> bool:
    """Does a coordinate reach an interior extreme at least ``MIN_LEG`` beyond both of its ends?"""
    for w in (values, -values):
        k = int(np.argmax(w))
        if w[k] - w[0] >= MIN_LEG and w[k] - w[-1] >= MIN_LEG:
            return True
    return False


def _requirement(name: str, ok: bool, reason: str) -> dict:
    return {"requirement": name, "ok": bool(ok), "reason": reason}


def _moved(d: np.ndarray) -> str:
    return f"moved x {d[0]:+.2f}, y {d[1]:+.2f} image sides (y down)"


def _direction(p: MotionPrompt, tracks: list[Track]) -> dict:
    name = str(MotionPrompt(p.kind, p.objects, p.direction))
    if p.kind == "move":
        u = np.array(DIRECTION_VECTORS[p.direction])
        xy = tracks[0].xy
        d = xy[-1] - xy[0]
        along, across = d @ u, abs(d @ u[::-1])
        ok = along >= MIN_TRAVEL and across <= MAX_ACROSS * along and not turns(xy @ u)
        return {**_requirement(name, ok, _moved(d) + (", turning back" if turns(xy @ u) else "")),
                "net": (float(d[0]), float(d[1]))}       # for diagnostics: e.g. the axis right, the sign wrong
    if p.kind == "bounce":
        xy = tracks[0].xy
        height, width = np.ptp(xy[:, 1]), np.abs(np.diff(xy[:, 0])).sum()
        ok = turns(xy[:, 0]) and height <= MAX_ACROSS * width
        x = ", ".join(f"{v:.2f}" for v in xy[:, 0])
        return _requirement(name, ok, f"x over time {x}; vertical range {height:.2f}")
    d = [t.xy[-1] - t.xy[0] for t in tracks]
    opposite = min(d[0][0], d[1][0]) <= -MIN_TRAVEL and max(d[0][0], d[1][0]) >= MIN_TRAVEL
    level = all(abs(v[1]) <= MAX_ACROSS * abs(v[0]) for v in d)
    gaps = [tracks[0].xy[k, 0] - tracks[1].xy[k, 0] for k in (0, -1)]
    swap = gaps[0] * gaps[1] < 0 and min(map(abs, gaps)) >= MIN_SWAP_GAP
    reason = (f"{tracks[0].name()} {_moved(d[0])}; {tracks[1].name()} {_moved(d[1])}; "
              f"x gap {gaps[0]:+.2f} -> {gaps[1]:+.2f}")
    return _requirement(name, opposite and level and swap, reason)


def _speed(p: MotionPrompt, tracks: list[Track]) -> dict:
    speeds = [track_speed(t) for t in tracks]
    ok = all(speed_name(s) == p.speed for s in speeds)
    limits = f"slowly < {SPEED_LIMITS[0]:.3f} <= normal < {SPEED_LIMITS[1]:.3f} <= quickly"
    measured = ", ".join(f"{s:.3f} ({speed_name(s)})" for s in speeds)
    return _requirement(f"moving {p.speed}", ok, f"{measured} image sides per reference frame; {limits}")


def _identity(tracks: list[Track], count_ok: bool) -> dict:
    if not count_ok:
        return _requirement("the same objects throughout", False, "objects appear or disappear")
    for track in tracks:
        labels = {(d.colour, d.shape) for d in track.detections}
        if len(labels) > 1:
            seen = ", ".join(f"{c or 'uncoloured'} {s}" for c, s in sorted(labels, key=str))
            return _requirement("the same objects throughout", False, f"one object is seen as {seen}")
        steps = np.linalg.norm(np.diff(track.xy, axis=0), axis=1) / np.diff(track.times)
        if steps.max(initial=0) > MAX_STEP:
            return _requirement("the same objects throughout", False,
                                f"{track.name()} jumps {steps.max():.2f} image sides in one reference frame")
    return _requirement("the same objects throughout", True, "every object keeps its colour and shape")


def _assign(p: MotionPrompt, tracks: list[Track]) -> list[Track]:
    """Tracks in prompt order: the permutation whose majority labels agree with the prompt most."""
    def agreement(order):
        return sum((t.label("colour") == s.colour) + (t.label("shape") == s.shape) for t, s in zip(order, p.objects))
    return list(max(permutations(tracks), key=agreement))


def _count(p: MotionPrompt, observation: Observation) -> dict:
    n = len(p.objects)
    wrong = [(t, len(found)) for t, found in enumerate(observation.detections) if len(found) != n]
    reason = (f"all {observation.frames} frames" if not wrong else
              "; ".join(f"frame {t} holds {k}" for t, k in wrong[:4]) + ("; ..." if len(wrong) > 4 else ""))
    return _requirement(f"exactly {n} object{'s' * (n > 1)} in every frame", not wrong, reason)


def _attributes(p: MotionPrompt, tracks: list[Track], observation: Observation) -> dict[str, list[dict]]:
    """Colour and shape of each prompt object: its track's majority label, else presence in every frame."""
    out = {"colour": [], "shape": []}
    for k, spec in enumerate(p.objects):
        for attribute, requirements in out.items():
            wanted = getattr(spec, attribute)
            if tracks:
                seen = tracks[k].label(attribute)
                ok, reason = seen == wanted, f"the tracked object is {seen or 'uncoloured'}"
            else:
                ok = all(any(getattr(d, attribute) == wanted for d in found) for found in observation.detections)
                reason = f"{'' if ok else 'not '}seen in every frame (no frame holds the asked count)"
            requirements.append(_requirement(f"{format_object(spec)}: {attribute} {wanted}", ok, reason))
    return out


def judge(observation: Observation, prompt: str) -> dict:
    """Score an observed clip (``observe(frames)``) against a prompt; see ``judge_clip``."""
    p = parse_motion(prompt)
    checks = dict.fromkeys(CHECKS, False)
    checks["speed"] = None if p.speed is None else False
    checks["background"] = None if p.background is None else False
    invalid = [(t, v["reason"]) for t, v in enumerate(observation.validity) if not v["valid"]]
    if invalid:
        reason = f"frame {invalid[0][0]}: {invalid[0][1]} ({len(invalid)} of {observation.frames} frames fail)"
        return {"ok": False, "prompt": prompt, "requirements": [_requirement("every frame a scene", False, reason)],
                "checks": checks}
    count = _count(p, observation)
    tracks = link(observation, len(p.objects))
    tracks = _assign(p, tracks) if tracks else tracks
    identity = _identity(tracks, count["ok"])
    attributes = _attributes(p, tracks, observation)
    requirements = [count, identity] + attributes["colour"] + attributes["shape"]
    checks["count"], checks["identity"] = count["ok"], identity["ok"]
    for attribute, found in attributes.items():
        checks[attribute] = all(r["ok"] for r in found)
    measurable = tracks and len(tracks[0].times) >= 3
    motion = _direction(p, tracks) if measurable else _requirement(str(p), False, "fewer than 3 frames to track")
    requirements.append(motion)
    checks["direction"] = motion["ok"]
    if p.speed is not None:
        speed = _speed(p, tracks) if measurable else _requirement(f"moving {p.speed}", False, "not measurable")
        requirements.append(speed)
        checks["speed"] = speed["ok"]
    if p.background is not None:
        rgb = observation.background
        nearest = min(BACKGROUNDS, key=lambda b: float(np.sum((np.array(BACKGROUNDS[b]) / 255 - rgb) ** 2)))
        requirements.append(_requirement(f"{p.background} background", nearest == p.background,
                                         f"background is {nearest}"))
        checks["background"] = nearest == p.background
    return {"ok": all(r["ok"] for r in requirements), "prompt": prompt, "requirements": requirements,
            "checks": checks}


def judge_clip(frames, prompt: str) -> dict:
    """Score one clip against one moving-shapes prompt.

    ``frames``: uint8 array ``[T, H, W, 3]``, a list of PIL images, or a float tensor ``[3, T, H, W]``
    in [-1, 1]. Returns ``{"ok", "prompt", "requirements": [{"requirement", "ok", "reason"}, ...],
    "checks": {"count", "identity", "colour", "shape", "direction", "speed", "background"}}``; ``speed``
    and ``background`` are None when the prompt does not state them. A clip with a frame that is not a
    scene fails every check. Raises ``ValueError`` for a prompt outside the grammar or malformed frames.
    """
    parse_motion(prompt)  # refuse a bad prompt before any compute
    return judge(observe(frames), prompt)


def judge_clips(clips, prompts) -> dict:
    """Score clips against prompts, one each: ``{"n", "ok", "checks": {name: rate or None}, "verdicts"}``.

    A check's rate is over the clips where it applies (speed and background only where stated).
    """
    clips, prompts = list(clips), list(prompts)
    if len(clips) != len(prompts) or not clips:
        raise ValueError(f"need one prompt per clip and at least one clip, got {len(clips)} clips and "
                         f"{len(prompts)} prompts")
    verdicts = [judge_clip(c, p) for c, p in zip(clips, prompts)]
    rates = {}
    for name in CHECKS:
        values = [v["checks"][name] for v in verdicts if v["checks"][name] is not None]
        rates[name] = float(np.mean(values)) if values else None
    return {"n": len(verdicts), "ok": float(np.mean([v["ok"] for v in verdicts])), "checks": rates,
            "verdicts": verdicts}


def axis_right(verdict: dict, prompt: str) -> bool | None:
    """A diagnostic beside the direction check: for a single object ``moving``, did it travel along the
    asked axis whichever way (horizontal for left/right, vertical for up/down; the same travel and
    straightness thresholds, sign ignored)? None for other prompts or unmeasurable clips.

    A model whose direction fails while its axis holds has learnt "horizontal" from "moving left" but
    not the sign: the text reaches its layout but not the order of its frames."""
    p = parse_motion(prompt)
    net = next((r["net"] for r in verdict["requirements"] if "net" in r), None)
    if p.kind != "move" or net is None:
        return None
    u = np.array(DIRECTION_VECTORS[p.direction])
    along, across = abs(np.asarray(net) @ u), abs(np.asarray(net) @ u[::-1])
    return bool(along >= MIN_TRAVEL and across <= MAX_ACROSS * along)
