"""Training captions for the shapes world: several phrasings of each prompt form.

Each phrasing says the same thing as the canonical prompt (relations may be turned around: "A left of
B" is "B right of A"), so a model trained on them learns the words, not one template. The canonical
text is always one of the choices.
"""

from __future__ import annotations

import random

from difflab.data.shapes_grammar import PLURALS, ObjectSpec, Prompt, article, format_prompt

SIZE_WORDS = {"small": ("small", "small", "little", "tiny"), "large": ("large", "large", "big")}
POSITION_WORDS = {
    (0, 0): ("in the top left", "in the upper left corner", "at the top left"),
    (0, 1): ("at the top", "at the top center", "in the top middle"),
    (0, 2): ("in the top right", "in the upper right corner", "at the top right"),
    (1, 0): ("on the left", "at the left side", "in the middle left"),
    (1, 1): ("in the center", "in the middle", "in the centre"),
    (1, 2): ("on the right", "at the right side", "in the middle right"),
    (2, 0): ("in the bottom left", "in the lower left corner", "at the bottom left"),
    (2, 1): ("at the bottom", "at the bottom center", "in the bottom middle"),
    (2, 2): ("in the bottom right", "in the lower right corner", "at the bottom right"),
}
RELATION_WORDS = {  # relation -> (same-order phrasings, phrasings with the objects swapped)
    "to the left of": (("to the left of", "left of", "on the left of"), ("to the right of", "right of")),
    "to the right of": (("to the right of", "right of", "on the right of"), ("to the left of", "left of")),
    "above": (("above", "over"), ("below", "under", "beneath")),
    "below": (("below", "under", "beneath"), ("above", "over")),
}
COUNT_PHRASES = {2: ("two", "2", "a pair of"), 3: ("three", "3", "a group of three")}
BACKGROUND_PHRASES = ("on a {} background", "against a {} background", "with a {} background", "on {}")
FRAMES = ("{}", "{}", "{}", "a picture of {}", "an image of {}", "a drawing of {}")


def _object(spec: ObjectSpec, rng: random.Random, with_cell: bool = True) -> str:
    size = rng.choice(SIZE_WORDS[spec.size]) if spec.size else None
    words = [w for w in (size, spec.colour, spec.shape) if w]
    if spec.colour and rng.random() < 0.2:  # "a circle that is red"
        words = [w for w in (size, spec.shape) if w]
        text = f"{article(words[0])} {' '.join(words)} that is {spec.colour}"
    else:
        text = f"{article(words[0])} {' '.join(words)}"
    if with_cell and spec.cell:
        text = f"{text} {rng.choice(POSITION_WORDS[spec.cell])}"
    return text


def _scene(p: Prompt, rng: random.Random, keep_order: bool = False) -> str:
    if p.kind == "single":
        spec = p.objects[0]
        if spec.cell and rng.random() < 0.25:  # "in the top left, a red circle"
            return f"{rng.choice(POSITION_WORDS[spec.cell])}, {_object(spec, rng, with_cell=False)}"
        return _object(spec, rng)
    if p.kind == "and":
        first, second = (_object(o, rng) for o in p.objects)
        if rng.random() < 0.5 and not keep_order:
            first, second = second, first
        return f"{first} {rng.choice(('and', 'and', 'with', 'together with'))} {second}"
    if p.kind == "count":
        o = p.objects[0]
        size = rng.choice(SIZE_WORDS[o.size]) if o.size else None
        return " ".join(w for w in (rng.choice(COUNT_PHRASES[p.count]), size, o.colour, PLURALS[o.shape]) if w)
    first, second = (_object(o, rng, with_cell=False) for o in p.objects)
    same, swapped = RELATION_WORDS[p.relation]
    if rng.random() < 0.35:
        return f"{second} {rng.choice(swapped)} {first}"
    return f"{first} {rng.choice(same)} {second}"


def paraphrase(prompt: Prompt, rng: random.Random, keep_order: bool = False) -> str:
    """One training caption for ``prompt``: the canonical text a third of the time, else a paraphrase.
    ``keep_order``: a pair ("X and Y") is named in the prompt's order (the same draws are made)."""
    if rng.random() < 1 / 3:
        return format_prompt(prompt)
    text = rng.choice(FRAMES).format(_scene(prompt, rng, keep_order))
    if prompt.background:
        text = f"{text} {rng.choice(BACKGROUND_PHRASES).format(prompt.background)}"
    return text

