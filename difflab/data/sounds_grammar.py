"""The sounds world's vocabulary, its canonical prompt grammar (parse and format) and training captions.

Grammar (case-insensitive; a trailing full stop is ignored)::

    prompt   := note [timbre] | note " then " note [timbre] | chord [timbre] | count " " hits
    note     := ("a" | "an") (pitch | "low" | "high") " note"        "a C4 note", "a low note"
    chord    := ("a" | "an") root " " ("major" | "minor") " chord"   "an A minor chord"
    timbre   := " on a flute" | " on a clarinet" | " on an organ" | " on a piano"
    hits     := "click" | "clicks" | "drum hit" | "drum hits"         "three clicks", "one drum hit"

Pitches are the natural notes C3..C6 in scientific pitch notation (C4 = middle C = MIDI 60, A4 = 440 Hz);
"low" is the octave C3..B3 and "high" C5..C6, with the C4 octave between them as a margin. Chords are
root-position triads on the seven natural roots; counts run from one to five. Everything here is pure
data, shared by the synthesiser (``difflab.data.sounds``) and the judge (``difflab.metrics.pitch``).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

LETTERS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}   # pitch class of each natural
PITCH_CLASS_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
PITCHES = tuple(f"{letter}{octave}" for octave in (3, 4, 5) for letter in LETTERS) + ("C6",)
REGISTERS = {"low": (48, 59), "high": (72, 84)}   # MIDI ranges: C3..B3 and C5..C6
TIMBRES = ("flute", "clarinet", "organ", "piano")
QUALITIES = {"major": (0, 4, 7), "minor": (0, 3, 7)}   # semitones above the root
COUNTS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
COUNT_WORDS = {n: word for word, n in COUNTS.items()}
HITS = {"click": "clicks", "drum hit": "drum hits"}
_PITCH_RE = re.compile(r"^([a-g])([3-6])$")


def midi(pitch: str) -> int:
    """MIDI number of a natural pitch name: ``midi("C4") == 60``, ``midi("A4") == 69``."""
    return 12 * (int(pitch[1:]) + 1) + LETTERS[pitch[0]]


def pitch_name(midi_number: int) -> str:
    """Scientific pitch name of a MIDI number, sharps for the black keys: 61 -> 'C#4'."""
    return f"{PITCH_CLASS_NAMES[midi_number % 12]}{midi_number // 12 - 1}"


def hz(midi_number: float) -> float:
    """Equal temperament, A4 = 440 Hz: ``f = 440 * 2 ** ((m - 69) / 12)``."""
    return 440.0 * 2.0 ** ((midi_number - 69) / 12)


def register_pitches(register: str) -> tuple[str, ...]:
    low, high = REGISTERS[register]
    return tuple(p for p in PITCHES if low <= midi(p) <= high)


def chord_pitch_classes(root: str, quality: str) -> frozenset[int]:
    return frozenset((LETTERS[root] + step) % 12 for step in QUALITIES[quality])


@dataclass(frozen=True)
class NoteSpec:
    """One note a prompt names: a pitch ("C4") or a register ("low" / "high"), never both."""

    pitch: str | None = None
    register: str | None = None

    @property
    def word(self) -> str:
        return self.pitch or self.register

    def midi_range(self) -> tuple[int, int]:
        return (midi(self.pitch),) * 2 if self.pitch else REGISTERS[self.register]


@dataclass(frozen=True)
class SoundPrompt:
    """A parsed prompt. ``kind`` is ``note``, ``sequence``, ``chord`` or ``rhythm``."""

    kind: str
    notes: tuple[NoteSpec, ...] = ()
    timbre: str | None = None
    root: str | None = None
    quality: str | None = None
    count: int | None = None
    hit: str | None = None

    def __str__(self) -> str:
        return format_prompt(self)


def article(word: str) -> str:
    """'an' before a vowel sound: an A4, an E minor chord, an F4, an organ."""
    return "an" if word[0] in "AEFaeiou" else "a"


def format_note(spec: NoteSpec) -> str:
    return f"{article(spec.word)} {spec.word} note"


def format_prompt(p: SoundPrompt) -> str:
    """The canonical text of a prompt: the form the judge parses and the benchmark uses."""
    if p.kind == "rhythm":
        return f"{COUNT_WORDS[p.count]} {p.hit if p.count == 1 else HITS[p.hit]}"
    if p.kind == "chord":
        text = f"{article(p.root)} {p.root} {p.quality} chord"
    else:
        text = " then ".join(format_note(n) for n in p.notes)
    return f"{text} on {article(p.timbre)} {p.timbre}" if p.timbre else text


def _grammar_error(prompt: str, problem: str) -> ValueError:
    return ValueError(
        f"prompt {prompt!r} is outside the sounds grammar: {problem}. Allowed: 'a <pitch|low|high> note', "
        f"'<note> then <note>', 'a <root> major|minor chord', each with an optional 'on a <timbre>', and "
        f"'<count> clicks|drum hits'; pitches {PITCHES[0]}..{PITCHES[-1]} (naturals); roots {', '.join(LETTERS)}; "
        f"timbres {', '.join(TIMBRES)}; counts {', '.join(COUNTS)}")


def _parse_note(phrase: str, prompt: str) -> NoteSpec:
    words = phrase.split()
    if len(words) != 3 or words[0] not in ("a", "an") or words[2] != "note":
        raise _grammar_error(prompt, f"expected 'a <pitch|low|high> note', found {phrase!r}")
    if words[1] in REGISTERS:
        return NoteSpec(register=words[1])
    match = _PITCH_RE.match(words[1])
    pitch = f"{match[1].upper()}{match[2]}" if match else None
    if pitch not in PITCHES:
        raise _grammar_error(prompt, f"unknown pitch {words[1]!r}")
    return NoteSpec(pitch=pitch)


def _parse_chord(words: list[str], prompt: str) -> SoundPrompt:
    if len(words) != 4 or words[0] not in ("a", "an") or words[1].upper() not in LETTERS:
        raise _grammar_error(prompt, f"expected 'a <root> major|minor chord', found {' '.join(words)!r}")
    if words[2] not in QUALITIES:
        raise _grammar_error(prompt, f"unknown chord quality {words[2]!r}")
    return SoundPrompt("chord", root=words[1].upper(), quality=words[2])


def _parse_rhythm(words: list[str], prompt: str) -> SoundPrompt:
    count, noun = COUNTS[words[0]], " ".join(words[1:])
    expected = {name if count == 1 else plural: name for name, plural in HITS.items()}
    if noun not in expected:
        raise _grammar_error(prompt, f"expected {' or '.join(map(repr, expected))} after {words[0]!r}, found {noun!r}")
    return SoundPrompt("rhythm", count=count, hit=expected[noun])


def _parse_sequence(text: str, prompt: str) -> SoundPrompt:
    parts = text.split(" then ")
    if len(parts) != 2:
        raise _grammar_error(prompt, "a sequence has exactly two notes")
    notes = tuple(_parse_note(part, prompt) for part in parts)
    if notes[0] == notes[1]:
        raise _grammar_error(prompt, "the two notes of a sequence must differ")
    return SoundPrompt("sequence", notes)


def parse_prompt(prompt: str) -> SoundPrompt:
    """Parse a canonical sounds prompt; raise ``ValueError`` naming the problem for anything else."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    text = " ".join(prompt.lower().split()).rstrip(".")
    if not text:
        raise _grammar_error(prompt, "it is empty")
    words = text.split()
    if words[0] in COUNTS:
        return _parse_rhythm(words, prompt)
    timbre = None
    head, sep, tail = text.rpartition(" on ")
    if sep:
        tail_words = tail.split()
        if len(tail_words) != 2 or tail_words[0] not in ("a", "an") or tail_words[1] not in TIMBRES:
            raise _grammar_error(prompt, f"unknown instrument {tail!r}")
        text, timbre = head, tail_words[1]
    if text.endswith(" chord"):
        parsed = _parse_chord(text.split(), prompt)
    elif " then " in text:
        parsed = _parse_sequence(text, prompt)
    else:
        parsed = SoundPrompt("note", (_parse_note(text, prompt),))
    return SoundPrompt(parsed.kind, parsed.notes, timbre, parsed.root, parsed.quality)


# Training captions: several phrasings that say what the canonical prompt says.
REGISTER_WORDS = {"low": ("low", "low", "low-pitched", "deep", "bass"),
                  "high": ("high", "high", "high-pitched", "bright")}
NOTE_FORMS = ("{a} {w} note", "{a} {w} note", "{a} {w} tone", "the note {w}", "{w}")
TIMBRE_FORMS = (" on {a} {t}", " on {a} {t}", " played on {a} {t}", " on the {t}", ", {t}")
THEN_WORDS = (" then ", " then ", " followed by ", ", then ", " and then ")
CHORD_FORMS = ("{a} {r} {q} chord", "{a} {r} {q} chord", "{a} {r} {q} triad", "the chord of {r} {q}", "{r} {q}")
COUNT_FORMS = {1: ("one", "1", "a single"), 2: ("two", "2", "a pair of"), 3: ("three", "3"), 4: ("four", "4"),
               5: ("five", "5")}
HIT_WORDS = {"click": (("click", "clicks"), ("short click", "short clicks"), ("tick", "ticks")),
             "drum hit": (("drum hit", "drum hits"), ("drum beat", "drum beats"), ("thump", "thumps"))}


def _note_caption(spec: NoteSpec, rng: random.Random) -> str:
    word = spec.pitch or rng.choice(REGISTER_WORDS[spec.register])
    form = rng.choice(NOTE_FORMS[:3] if spec.register else NOTE_FORMS)
    return form.format(a=article(word), w=word)


def paraphrase(p: SoundPrompt, rng: random.Random) -> str:
    """One training caption for ``p``: the canonical text a third of the time, else a paraphrase."""
    if rng.random() < 1 / 3:
        return format_prompt(p)
    if p.kind == "rhythm":
        noun = rng.choice(HIT_WORDS[p.hit])[p.count > 1]
        return f"{rng.choice(COUNT_FORMS[p.count])} {noun}"
    if p.kind == "chord":
        text = rng.choice(CHORD_FORMS).format(a=article(p.root), r=p.root, q=p.quality)
    elif p.kind == "sequence":
        text = rng.choice(THEN_WORDS).join(_note_caption(n, rng) for n in p.notes)
    else:
        text = _note_caption(p.notes[0], rng)
    if p.timbre:
        text += rng.choice(TIMBRE_FORMS).format(a=article(p.timbre), t=p.timbre)
    return text
