"""The moving-shapes world's prompt grammar (parse and format) and its training captions.

Grammar (lower case; a trailing full stop is ignored)::

    prompt  := motion [" " speed] [" on a " background " background"]
    motion  := object " moving " direction                       one object moving
             | object " falling" | object " rising"              paraphrases of "moving down" / "moving up"
             | object " bouncing"                                one object bouncing between the side walls
             | object " and " object " passing each other"       one moves right, the other left; they cross
    object  := ("a" | "an") colour shape
    speed   := "slowly" | "quickly"                              absent: normal speed

Colours, shapes and backgrounds are the shapes world's (``difflab.data.shapes_grammar``); the
background is white when the prompt names none. ``format_motion`` writes the canonical text: the one
the judge (``difflab.metrics.motion``) reads and val/test captions use. ``paraphrase`` gives the
training captions, which say the same thing in several phrasings.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from difflab.data.shapes_grammar import BACKGROUNDS, COLOURS, SHAPES, ObjectSpec, article

KINDS = ("move", "bounce", "pass")
DIRECTIONS = ("right", "left", "up", "down")
SPEED_WORDS = ("slowly", "quickly")  # plus the unstated normal speed
VERB_DIRECTIONS = {"falling": "down", "rising": "up"}
_BACKGROUND_RE = re.compile(r"^(?P<motion>.+?) on an? (?P<bg>\w+) background$")
_MOVE_RE = re.compile(r"^(?P<object>.+) moving (?P<direction>\w+)$")


@dataclass(frozen=True)
class MotionPrompt:
    """A parsed prompt. ``kind`` is move, bounce or pass; ``speed`` None means unstated (normal)."""

    kind: str
    objects: tuple[ObjectSpec, ...]   # colour and shape of each object, in prompt order
    direction: str | None = None      # move only
    speed: str | None = None
    background: str | None = None

    def __str__(self) -> str:
        return format_motion(self)


def format_object(spec: ObjectSpec) -> str:
    return f"{article(spec.colour)} {spec.colour} {spec.shape}"


def format_motion(p: MotionPrompt) -> str:
    """The canonical text of a prompt ("falling" and "rising" are written "moving down" / "moving up")."""
    if p.kind == "move":
        text = f"{format_object(p.objects[0])} moving {p.direction}"
    elif p.kind == "bounce":
        text = f"{format_object(p.objects[0])} bouncing"
    else:
        text = f"{format_object(p.objects[0])} and {format_object(p.objects[1])} passing each other"
    if p.speed:
        text = f"{text} {p.speed}"
    return f"{text} on {article(p.background)} {p.background} background" if p.background else text


def _grammar_error(prompt: str, problem: str) -> ValueError:
    return ValueError(
        f"prompt {prompt!r} is outside the moving-shapes grammar: {problem}. Allowed: 'a <colour> <shape> moving "
        f"right|left|up|down', 'a <colour> <shape> falling|rising', 'a <colour> <shape> bouncing', "
        f"'a <colour> <shape> and a <colour> <shape> passing each other', each with an optional speed "
        f"({' or '.join(SPEED_WORDS)}) and then an optional 'on a <background> background'; colours "
        f"{', '.join(COLOURS)}; shapes {', '.join(SHAPES)}; backgrounds {', '.join(BACKGROUNDS)}")


def _parse_object(phrase: str, prompt: str) -> ObjectSpec:
    words = phrase.split()
    if not words or words[0] not in ("a", "an"):
        raise _grammar_error(prompt, f"object {phrase!r} must start with 'a' or 'an'")
    if len(words) != 3:
        raise _grammar_error(prompt, f"object {phrase!r} must be 'a <colour> <shape>' (speed words go at the end)")
    colour, shape = words[1:]
    if colour not in COLOURS:
        raise _grammar_error(prompt, f"unknown colour {colour!r} in {phrase!r}")
    if shape not in SHAPES:
        raise _grammar_error(prompt, f"unknown shape {shape!r} in {phrase!r}")
    return ObjectSpec(shape, colour)


def _parse_motion(text: str, prompt: str) -> MotionPrompt:
    if text.endswith(" passing each other"):
        parts = text[: -len(" passing each other")].split(" and ")
        if len(parts) != 2:
            raise _grammar_error(prompt, "'passing each other' needs exactly two objects joined by 'and'")
        return MotionPrompt("pass", tuple(_parse_object(part, prompt) for part in parts))
    if text.endswith(" bouncing"):
        return MotionPrompt("bounce", (_parse_object(text[: -len(" bouncing")], prompt),))
    for verb, direction in VERB_DIRECTIONS.items():
        if text.endswith(f" {verb}"):
            return MotionPrompt("move", (_parse_object(text[: -len(verb) - 1], prompt),), direction)
    match = _MOVE_RE.match(text)
    if match is None:
        raise _grammar_error(prompt, "no motion found")
    if match["direction"] not in DIRECTIONS:
        raise _grammar_error(prompt, f"unknown direction {match['direction']!r}")
    return MotionPrompt("move", (_parse_object(match["object"], prompt),), match["direction"])


def parse_motion(prompt: str) -> MotionPrompt:
    """Parse a moving-shapes prompt; raise ``ValueError`` naming the problem for anything else."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    text = " ".join(prompt.lower().replace("grey", "gray").split()).rstrip(".")
    if not text:
        raise _grammar_error(prompt, "it is empty")
    background = speed = None
    match = _BACKGROUND_RE.match(text)
    if match:
        background, text = match["bg"], match["motion"]
        if background not in BACKGROUNDS:
            raise _grammar_error(prompt, f"unknown background {background!r}")
    last = text.rsplit(" ", 1)[-1]
    if last in SPEED_WORDS:
        speed, text = last, text[: -len(last) - 1]
    p = _parse_motion(text, prompt)
    return MotionPrompt(p.kind, p.objects, p.direction, speed, background)


# Training captions: several phrasings of the same content; the canonical text a third of the time.
DIRECTION_PHRASES = {
    "right": ("moving right", "moving to the right", "moves to the right", "going right", "sliding right"),
    "left": ("moving left", "moving to the left", "moves to the left", "going left", "sliding left"),
    "up": ("moving up", "rising", "moves upward", "going up", "floating up"),
    "down": ("moving down", "falling", "moves downward", "going down", "dropping"),
}
SPEED_PHRASES = {"slowly": ("slowly", "slowly", "at a slow pace"), "quickly": ("quickly", "fast", "rapidly")}
BOUNCE_PHRASES = ("bouncing", "bouncing off the walls", "bouncing back and forth", "that bounces off a wall")
PASS_PHRASES = ("passing each other", "moving past each other", "crossing paths", "passing by each other")
FRAMES = ("{}", "{}", "{}", "a video of {}", "a clip of {}", "an animation of {}")
BACKGROUND_PHRASES = ("on a {} background", "against a {} background", "with a {} background")


def _object_caption(spec: ObjectSpec, rng: random.Random) -> str:
    if rng.random() < 0.2:
        return f"{article(spec.shape)} {spec.shape} that is {spec.colour}"
    return format_object(spec)


def _with_speed(verb_phrase: str, speed: str | None, rng: random.Random) -> str:
    if speed is None:
        return verb_phrase
    word = rng.choice(SPEED_PHRASES[speed])
    if " " not in word and rng.random() < 0.3:  # "slowly moving right"
        return f"{word} {verb_phrase}"
    return f"{verb_phrase} {word}"


def _motion_caption(p: MotionPrompt, rng: random.Random) -> str:
    if p.kind == "pass":
        first, second = (_object_caption(o, rng) for o in p.objects)
        if rng.random() < 0.5:
            first, second = second, first
        if rng.random() < 0.25:  # "a red circle passing a blue square [quickly]"
            speed = f" {rng.choice(SPEED_PHRASES[p.speed])}" if p.speed else ""
            return f"{first} passing {second}{speed}"
        return f"{first} and {second} {_with_speed(rng.choice(PASS_PHRASES), p.speed, rng)}"
    phrase = rng.choice(DIRECTION_PHRASES[p.direction]) if p.kind == "move" else rng.choice(BOUNCE_PHRASES)
    return f"{_object_caption(p.objects[0], rng)} {_with_speed(phrase, p.speed, rng)}"


def paraphrase(prompt: MotionPrompt, rng: random.Random) -> str:
    """One training caption for ``prompt``: the canonical text a third of the time, else a paraphrase."""
    if rng.random() < 1 / 3:
        return format_motion(prompt)
    text = rng.choice(FRAMES).format(_motion_caption(prompt, rng))
    if prompt.background:
        text = f"{text} {rng.choice(BACKGROUND_PHRASES).format(prompt.background)}"
    return text
