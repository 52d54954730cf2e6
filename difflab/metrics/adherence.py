"""The shapes adherence oracle: does an image show what its prompt says?

``check(image, prompt)`` parses the prompt with the shapes grammar, finds the image's objects
(``difflab.metrics.detect``) and tests each requirement the prompt states: every named object present
with its colour and shape, and its size, grid cell, relation and exact count where stated. Objects the
prompt does not name are ignored, except that a count must be exact. It follows the object-focused
evaluation of GenEval (Ghosh et al., 2023), with exact geometry in place of a detector.
"""

from __future__ import annotations

from itertools import permutations

from difflab.data.shapes_grammar import CELL_NAMES, BACKGROUNDS, ObjectSpec, Prompt, format_object, parse_prompt
from difflab.metrics.detect import Detection, detect

RELATION_MARGIN = 0.1  # centroids must differ by a tenth of the image side along the relation's axis


def describe(d: Detection) -> str:
    colour = d.colour or "uncoloured"
    return f"{d.size} {colour} {d.shape} {CELL_NAMES[d.cell]}"


def _matches(spec: ObjectSpec, d: Detection) -> bool:
    """Colour and shape agree (a colour the prompt leaves free matches anything)."""
    return d.shape == spec.shape and (spec.colour is None or d.colour == spec.colour)


def _fits(spec: ObjectSpec, d: Detection) -> bool:
    return (_matches(spec, d) and (spec.size is None or d.size == spec.size)
            and (spec.cell is None or d.cell == spec.cell))


def _requirement(name: str, ok: bool, reason: str) -> dict:
    return {"requirement": name, "ok": bool(ok), "reason": reason}


def _object_requirements(spec: ObjectSpec, found: list[Detection]) -> list[dict]:
    """Presence, then size and position checked on the best candidate of the right colour and shape."""
    name = format_object(ObjectSpec(spec.shape, spec.colour))
    candidates = [d for d in found if _matches(spec, d)]
    if not candidates:
        seen = ", ".join(describe(d) for d in found) or "nothing"
        return [_requirement(f"{name} present", False, f"no {name.split(' ', 1)[1]} found; saw {seen}")]
    best = max(candidates, key=lambda d: (spec.size in (None, d.size)) + (spec.cell in (None, d.cell)))
    out = [_requirement(f"{name} present", True, f"found {describe(best)}")]
    if spec.size:
        out.append(_requirement(f"{name} is {spec.size}", best.size == spec.size, f"it is {best.size}"))
    if spec.cell:
        out.append(_requirement(f"{name} {CELL_NAMES[spec.cell]}", best.cell == spec.cell,
                                f"it is {CELL_NAMES[best.cell]}"))
    return out


def relation_holds(relation: str, a: Detection, b: Detection) -> bool:
    """``a <relation> b``: the centroids differ along the relation's axis more than across it."""
    dx, dy = b.x - a.x, b.y - a.y
    along, across = {"to the left of": (dx, dy), "to the right of": (-dx, dy),
                     "above": (dy, dx), "below": (-dy, dx)}[relation]
    return along > RELATION_MARGIN and abs(across) < along


def _check_and(p: Prompt, found: list[Detection]) -> list[dict]:
    out = [r for spec in p.objects for r in _object_requirements(spec, found)]
    if len(p.objects) == 2 and all(r["ok"] for r in out) and not any(_fits(p.objects[0], a) and _fits(p.objects[1], b)
                                             for a, b in permutations(found, 2)):
        out.append(_requirement("distinct objects", False, "one object is asked to be two things"))
    return out


def _check_relation(p: Prompt, found: list[Detection]) -> list[dict]:
    out = [r for spec in p.objects for r in _object_requirements(spec, found)]
    if not all(r["ok"] for r in out):
        return out
    pairs = [(a, b) for a, b in permutations(found, 2) if _fits(p.objects[0], a) and _fits(p.objects[1], b)]
    good = [(a, b) for a, b in pairs if relation_holds(p.relation, a, b)]
    first, second = (format_object(o) for o in p.objects)
    if good:
        reason = f"{describe(good[0][0])} is {p.relation} {describe(good[0][1])}"
    elif pairs:
        reason = f"{describe(pairs[0][0])} is not {p.relation} {describe(pairs[0][1])}"
    else:
        reason = "no pair of distinct objects of the right size"
    return out + [_requirement(f"{first} {p.relation} {second}", bool(good), reason)]


def _check_count(p: Prompt, found: list[Detection]) -> list[dict]:
    spec = p.objects[0]
    n = sum(_fits(spec, d) for d in found)
    what = format_object(spec).split(" ", 1)[1]
    return [_requirement(f"exactly {p.count} x {what}", n == p.count, f"found {n}")]


def _check_background(background: str, bg_rgb) -> dict:
    nearest = min(BACKGROUNDS, key=lambda name: sum((c / 255 - v) ** 2 for c, v in zip(BACKGROUNDS[name], bg_rgb)))
    return _requirement(f"{background} background", nearest == background, f"background is {nearest}")


def check(image, prompt: str) -> dict:
    """Score one image against one prompt.

    Returns ``{"ok": bool, "prompt": str, "requirements": [{"requirement", "ok", "reason"}, ...],
    "objects": [str, ...]}``; ``ok`` is true when every requirement holds. Raises ``ValueError`` for a
    prompt outside the shapes grammar (see ``difflab.data.shapes_grammar``).
    """
    parsed = parse_prompt(prompt)
    found, bg_rgb = detect(image)
    checker = {"single": _check_and, "and": _check_and, "count": _check_count, "relation": _check_relation}
    requirements = checker[parsed.kind](parsed, found)
    if parsed.background:
        requirements.append(_check_background(parsed.background, bg_rgb))
    return {"ok": all(r["ok"] for r in requirements), "prompt": prompt, "requirements": requirements,
            "objects": [describe(d) for d in found]}
