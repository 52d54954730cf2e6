"""The shapes world's vocabulary and its canonical prompt grammar (parse and format).

Grammar (lower case; a trailing full stop is ignored)::

    prompt   := scene [" on a " background " background"]
    scene    := object [position]                              single
              | object [position] " and " object [position]   two objects
              | count [size] [colour] plural                   counting ("two red circles")
              | object " " relation " " object                 relation
    object   := ("a" | "an") [size] [colour] shape

The vocabulary is fixed: four shapes, six colours, two sizes, the nine cells of a 3x3 grid, two
counts, four relations and three backgrounds; ``NOVEL_COLOURS`` are drawn and parsed but never sampled
by a dataset (a LoRA teaches them). Everything here is pure data, shared by the renderer
(``difflab.data.shapes``) and the oracle (``difflab.metrics.adherence``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SHAPES = ("circle", "square", "triangle", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
COLOURS = {  # sRGB, chosen far apart in hue: red 0, orange ~26, yellow ~54, green ~132, blue ~226, purple ~276
    "red": (220, 38, 38),
    "orange": (250, 120, 20),
    "yellow": (245, 225, 25),
    "green": (34, 160, 60),
    "blue": (37, 80, 225),
    "purple": (140, 50, 200),
}
# Colours the renderer draws and the oracle can be taught, but that no dataset ever samples: the
# concepts a LoRA teaches a trained model (hue ~183, between green and blue; the six-colour oracle
# calls it blue).
NOVEL_COLOURS = {"cyan": (20, 190, 200)}
PALETTE = {**COLOURS, **NOVEL_COLOURS}
SIZES = ("small", "large")
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
POSITIONS = {  # phrase -> (row, col) of the 3x3 grid, row 0 at the top
    "in the top left": (0, 0), "at the top": (0, 1), "in the top right": (0, 2),
    "on the left": (1, 0), "in the center": (1, 1), "on the right": (1, 2),
    "in the bottom left": (2, 0), "at the bottom": (2, 1), "in the bottom right": (2, 2),
}
CELL_NAMES = {cell: phrase for phrase, cell in POSITIONS.items()}
COUNTS = {"two": 2, "three": 3}
COUNT_WORDS = {n: word for word, n in COUNTS.items()}
RELATIONS = ("to the left of", "to the right of", "above", "below")
_SINGULAR = {plural: shape for shape, plural in PLURALS.items()}
_BACKGROUND_RE = re.compile(r"^(?P<scene>.+?) on an? (?P<bg>\w+) background$")


@dataclass(frozen=True)
class ObjectSpec:
    """One object a prompt names; ``None`` means the prompt leaves that attribute free."""

    shape: str
    colour: str | None = None
    size: str | None = None
    cell: tuple[int, int] | None = None


@dataclass(frozen=True)
class Prompt:
    """A parsed prompt. ``kind`` is ``single``, ``and``, ``count`` or ``relation``."""

    kind: str
    objects: tuple[ObjectSpec, ...]
    count: int | None = None
    relation: str | None = None
    background: str | None = None

    def __str__(self) -> str:
        return format_prompt(self)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def format_object(spec: ObjectSpec, with_cell: bool = True) -> str:
    words = [w for w in (spec.size, spec.colour, spec.shape) if w]
    text = f"{article(words[0])} {' '.join(words)}"
    return f"{text} {CELL_NAMES[spec.cell]}" if with_cell and spec.cell else text


def format_prompt(p: Prompt) -> str:
    """The canonical text of a prompt: the form the oracle parses and the bench uses."""
    if p.kind == "single":
        text = format_object(p.objects[0])
    elif p.kind == "and":
        text = " and ".join(format_object(o) for o in p.objects)
    elif p.kind == "count":
        o = p.objects[0]
        text = " ".join(w for w in (COUNT_WORDS[p.count], o.size, o.colour, PLURALS[o.shape]) if w)
    else:
        text = f"{format_object(p.objects[0], False)} {p.relation} {format_object(p.objects[1], False)}"
    return f"{text} on {article(p.background)} {p.background} background" if p.background else text


def _grammar_error(prompt: str, problem: str) -> ValueError:
    return ValueError(
        f"prompt {prompt!r} is outside the shapes grammar: {problem}. Allowed: '[a|an] [size] [colour] shape "
        f"[position]', 'X and Y', 'two|three [size] [colour] shapes', 'X <relation> Y', each with an optional "
        f"'on a <background> background'; shapes {', '.join(SHAPES)}; colours {', '.join(PALETTE)}; sizes "
        f"{', '.join(SIZES)}; positions {', '.join(POSITIONS)}; relations {', '.join(RELATIONS)}; "
        f"backgrounds {', '.join(BACKGROUNDS)}")


def _parse_words(words: list[str], nouns: dict[str, str], prompt: str, phrase: str) -> ObjectSpec:
    """``[size] [colour] noun`` -> ObjectSpec; ``nouns`` maps accepted nouns to shapes."""
    if not words or words[-1] not in nouns:
        found = words[-1] if words else "nothing"
        raise _grammar_error(prompt, f"expected a shape at the end of {phrase!r}, found {found!r}")
    size = colour = None
    for word in words[:-1]:
        if word in SIZES and size is None and colour is None:
            size = word
        elif word in PALETTE and colour is None:
            colour = word
        else:
            raise _grammar_error(prompt, f"unexpected word {word!r} in {phrase!r}")
    return ObjectSpec(shape=nouns[words[-1]], colour=colour, size=size)


def _parse_object(phrase: str, prompt: str, allow_cell: bool) -> ObjectSpec:
    cell = None
    for name, where in POSITIONS.items():
        if allow_cell and phrase.endswith(" " + name):
            phrase, cell = phrase[: -len(name) - 1], where
            break
    words = phrase.split()
    if not words or words[0] not in ("a", "an"):
        raise _grammar_error(prompt, f"object {phrase!r} must start with 'a' or 'an'")
    spec = _parse_words(words[1:], {s: s for s in SHAPES}, prompt, phrase)
    return ObjectSpec(spec.shape, spec.colour, spec.size, cell)


def _parse_scene(text: str, prompt: str) -> Prompt:
    first = text.split(" ", 1)[0]
    if first in COUNTS:
        spec = _parse_words(text.split()[1:], _SINGULAR, prompt, text)
        return Prompt("count", (spec,), count=COUNTS[first])
    for relation in RELATIONS:
        left, sep, right = text.partition(f" {relation} ")
        if sep:
            objects = (_parse_object(left, prompt, False), _parse_object(right, prompt, False))
            return Prompt("relation", objects, relation=relation)
    if " and " in text:
        parts = text.split(" and ")
        if len(parts) != 2:
            raise _grammar_error(prompt, "at most two objects may be joined with 'and'")
        return Prompt("and", tuple(_parse_object(part, prompt, True) for part in parts))
    return Prompt("single", (_parse_object(text, prompt, True),))


def parse_prompt(prompt: str) -> Prompt:
    """Parse a canonical shapes prompt; raise ``ValueError`` naming the problem for anything else."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    text = " ".join(prompt.lower().replace("grey", "gray").split()).rstrip(".")
    if not text:
        raise _grammar_error(prompt, "it is empty")
    background = None
    match = _BACKGROUND_RE.match(text)
    if match:
        background = match["bg"]
        if background not in BACKGROUNDS:
            raise _grammar_error(prompt, f"unknown background {background!r}")
        text = match["scene"]
    parsed = _parse_scene(text, prompt)
    return Prompt(parsed.kind, parsed.objects, parsed.count, parsed.relation, background)
