"""shapes-bench: a fixed set of 540 prompts in GenEval-style categories, and its per-category report.

Categories follow GenEval (Ghosh et al., 2023): single object, two objects, counting, colours,
position and relation (GenEval's "colour attribution" is our two-object and relation prompts, which
bind a colour to each object). The set is drawn once from a fixed seed; each entry carries the seed
the image is generated with, so a score is reproducible. Entries that name a colour-shape pair held
out of the training split are flagged, so generalisation can be read separately.
"""

from __future__ import annotations

import random
from itertools import product

from difflab.data.shapes import CELLS, HELD_OUT
from difflab.data.shapes_grammar import (COLOURS, RELATIONS, SHAPES, SIZES, ObjectSpec, Prompt, format_prompt,
                                         parse_prompt)

CATEGORIES = ("single_object", "two_objects", "counting", "colours", "position", "relation")
BENCHES = ("shapes-bench",)
BENCH_SEED = 2024


def _repeat(prompts: list[Prompt], times: int) -> list[tuple[Prompt, int]]:
    return [(p, k) for p in prompts for k in range(times)]


def _pairs(rng: random.Random, n: int) -> list[tuple[ObjectSpec, ObjectSpec]]:
    """``n`` distinct ordered pairs of coloured objects that differ in colour or shape."""
    objects = [ObjectSpec(s, c) for c, s in product(COLOURS, SHAPES)]
    pairs = [(a, b) for a in objects for b in objects if a != b]
    return rng.sample(pairs, n)


def _category_prompts(rng: random.Random) -> dict[str, list[tuple[Prompt, int]]]:
    colours, cells = tuple(COLOURS), CELLS
    single = [Prompt("single", (ObjectSpec(s, None, z),)) for s in SHAPES for z in (None, *SIZES)]
    coloured = [Prompt("single", (ObjectSpec(s, c),)) for c in colours for s in SHAPES]
    counting = [Prompt("count", (ObjectSpec(s, c),), count=n) for n in (2, 3) for c in colours for s in SHAPES]
    placed = [Prompt("single", (ObjectSpec(s, c, None, cell),)) for c in colours for s in SHAPES for cell in cells]
    relations = [Prompt("relation", pair, relation=rng.choice(RELATIONS)) for pair in _pairs(rng, 100)]
    return {
        "single_object": _repeat(single, 4),                                              # 12 x 4
        "two_objects": _repeat([Prompt("and", pair) for pair in _pairs(rng, 100)], 1),    # 100
        "counting": _repeat(counting, 2),                                                 # 48 x 2
        "colours": _repeat(coloured, 4),                                                  # 24 x 4
        "position": _repeat(rng.sample(placed, 100), 1),                                  # 100
        "relation": _repeat(relations, 1),                                                # 100
    }


def bench_prompts(name: str = "shapes-bench") -> list[dict]:
    """The benchmark entries: ``{"prompt", "category", "seed", "held_out"}``, in a fixed order."""
    if name not in BENCHES:
        raise ValueError(f"unknown prompt set {name!r}; available: {', '.join(BENCHES)}")
    entries = []
    for category, prompts in _category_prompts(random.Random(BENCH_SEED)).items():
        for prompt, repeat in prompts:
            held_out = any((o.colour, o.shape) in HELD_OUT for o in prompt.objects)
            entries.append({"prompt": format_prompt(prompt), "category": category, "seed": len(entries),
                            "held_out": held_out, "repeat": repeat})
    return entries


def load_prompts(spec: str) -> list[dict]:
    """A named prompt set, or a text file with one canonical prompt per line (category "custom")."""
    if spec in BENCHES:
        return bench_prompts(spec)
    from pathlib import Path

    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--prompts must be one of {', '.join(BENCHES)} or a text file of prompts (a video or "
                         f"audio model: held-out or test); {spec!r} is none of these")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    for line in lines:
        parse_prompt(line)  # refuse a file with a prompt outside the grammar before any generation
    return [{"prompt": p, "category": "custom", "seed": i, "held_out": False, "repeat": 0}
            for i, p in enumerate(lines)]


def balanced(entries: list[dict], limit: int | None) -> list[dict]:
    """The first ``limit`` entries of a round-robin over categories (in their order of appearance), each
    category giving its distinct prompts before their repeats, so a quick look covers every category
    and as many prompts as it can; deterministic. ``None`` keeps every entry in its order."""
    if limit is None or limit >= len(entries):
        return list(entries)
    queues: dict[str, list[dict]] = {}
    for entry in sorted(entries, key=lambda e: e.get("repeat", 0)):  # stable: prompt order kept per repeat
        queues.setdefault(entry["category"], []).append(entry)
    picked, depth = [], 0
    while len(picked) < limit:
        picked += [queue[depth] for queue in queues.values() if depth < len(queue)][: limit - len(picked)]
        depth += 1
    return picked


SEED_STRIDE = 100_000   # seed k of an entry: its own seed + k * SEED_STRIDE (bench seeds stay below 1,000)


def with_seeds(entries: list[dict], seeds: int) -> list[dict]:
    """Every entry under ``seeds`` seeds: the first is its own (so ``seeds=1`` is the entries as they
    are), the others further apart than any two entries' seeds. One seed a prompt leaves ~0.05 of noise
    on a category of 100 prompts; N seeds divide it by about sqrt(N)."""
    return [{**e, "seed": e["seed"] + k * SEED_STRIDE} for k in range(seeds) for e in entries]


def report(entries: list[dict], oks: list[bool]) -> dict:
    """Accuracy per category, over held-out pairs, and overall (GenEval's overall is the category mean)."""
    if len(entries) != len(oks):
        raise ValueError(f"got {len(oks)} results for {len(entries)} prompts")
    groups: dict[str, list[bool]] = {}
    for entry, ok in zip(entries, oks):
        groups.setdefault(entry["category"], []).append(bool(ok))
        if entry.get("held_out"):
            groups.setdefault("held_out_pairs", []).append(bool(ok))
    table = {name: {"accuracy": sum(v) / len(v), "n": len(v)} for name, v in groups.items()}
    categories = [table[c]["accuracy"] for c in groups if c != "held_out_pairs"]
    table["overall"] = {"accuracy": sum(categories) / len(categories), "n": len(oks)}
    return table


def format_table(table: dict) -> str:
    lines = [f"{'category':<16}{'accuracy':>10}{'n':>6}"]
    lines += [f"{name:<16}{row['accuracy']:>10.3f}{row['n']:>6}" for name, row in table.items()]
    return "\n".join(lines)
