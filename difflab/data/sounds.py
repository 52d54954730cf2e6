"""The sounds world: procedural captioned one-second clips, deterministic from a seed.

Four forms (grammar in ``difflab.data.sounds_grammar``): single notes of a named pitch or register on one
of four instruments, two-note sequences, major and minor triads, and counted clicks or drum hits. Notes
are additive synthesis, ``x(t) = a e(t) sum_h w_h sin(2 pi h f0 t + phi_h)`` with harmonic weights ``w_h``
and an envelope ``e(t)`` per instrument (flute: nearly a sine with a slow attack and vibrato; clarinet: odd
harmonics; organ: many harmonics, sustained; piano: struck, decaying, upper harmonics dying first).
Every partial stays below ``BAND_LIMIT`` so that the whole clip lives inside the spectrogram's mel range.
Each item varies a little: loudness, onset times, durations, harmonic tilt, tuning (+-``DETUNE_CENTS``)
and a faint noise floor, so the world is not a lookup table.

``render(prompt, seed)`` synthesises a clip that satisfies a canonical prompt; ``SoundsDataset`` serves
``{"audio", "caption", "prompt", "sound"}`` items for training and evaluation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from difflab.data.procedural import ProceduralSplit
from difflab.data.sounds_grammar import (HITS, LETTERS, PITCHES, QUALITIES, TIMBRES, NoteSpec, SoundPrompt,
                                         format_prompt, hz, midi, paraphrase, parse_prompt, pitch_name,
                                         register_pitches)
from difflab.data.spectrogram import CLIP_SAMPLES, F_MAX, N_MELS, SAMPLE_RATE

BAND_LIMIT = 3_800.0      # Hz; no partial above this (the mel filterbank ends at F_MAX)
DETUNE_CENTS = 8.0        # largest random tuning error of a note
FORM_WEIGHTS = {"note": 0.3, "sequence": 0.25, "chord": 0.25, "rhythm": 0.2}
# (pitch, instrument) pairs and chords that train never plays; val and test do.
HELD_OUT = (("G4", "flute"), ("C5", "organ"), ("E3", "piano"), ("A4", "clarinet"))
HELD_OUT_CHORDS = (("D", "minor"), ("F", "major"), ("B", "minor"))
HARMONICS = {  # w_h, h = 1, 2, ...
    "flute": (1.0, 0.25, 0.08, 0.03),
    "clarinet": (1.0, 0.03, 0.6, 0.03, 0.4, 0.02, 0.25, 0.02, 0.15, 0.01, 0.08),
    "organ": (1.0, 0.8, 0.65, 0.55, 0.45, 0.4, 0.32, 0.28, 0.22, 0.18, 0.15, 0.12),
    "piano": (1.0, 0.55, 0.35, 0.22, 0.14, 0.09, 0.06, 0.04),
}
ENVELOPES = {  # attack s, release s, decay time constant s (None: sustained)
    "flute": (0.06, 0.06, None), "clarinet": (0.03, 0.04, None), "organ": (0.01, 0.02, None),
    "piano": (0.004, 0.05, 0.3),
}
assert F_MAX > BAND_LIMIT and set(HARMONICS) == set(ENVELOPES) == set(TIMBRES)


@dataclass(frozen=True)
class Note:
    """One synthesised note: MIDI pitch, instrument, start and length in seconds, peak-relative level."""

    midi: int
    timbre: str
    onset: float
    duration: float
    level: float = 1.0
    detune: float = 0.0   # cents
    tilt: float = 0.0     # harmonic h is scaled by h ** -tilt

    @property
    def pitch(self) -> str:
        return pitch_name(self.midi)


@dataclass(frozen=True)
class Hit:
    """One percussive hit: ``kind`` is 'click' or 'drum hit'."""

    kind: str
    onset: float
    level: float = 1.0


@dataclass(frozen=True)
class Sound:
    """Everything that was synthesised and the prompt it was made for; ``render_sound`` plays it."""

    prompt: str
    notes: tuple[Note, ...] = ()
    hits: tuple[Hit, ...] = ()
    peak: float = 0.7          # the clip's peak amplitude
    noise: float = 1e-3        # standard deviation of the white noise floor
    seed: int = 0              # of the noise and the phases


def _note(midi_number: int, timbre: str, onset: float, duration: float, rng: random.Random) -> Note:
    return Note(midi_number, timbre, onset, duration, rng.uniform(0.7, 1.0), rng.uniform(-DETUNE_CENTS, DETUNE_CENTS),
                rng.uniform(-0.3, 0.3))


def _pick_pitch(spec: NoteSpec, rng: random.Random) -> int:
    return midi(spec.pitch) if spec.pitch else midi(rng.choice(register_pitches(spec.register)))


def _hit_onsets(count: int, rng: random.Random) -> list[float]:
    """Onsets at least 0.16 s apart (and jittered), the last one early enough to ring out."""
    spacing = rng.uniform(0.16, min(0.3, 0.85 / max(count - 1, 1)))
    start = rng.uniform(0.02, 0.9 - spacing * (count - 1))
    return [start + k * spacing + rng.uniform(-0.008, 0.008) for k in range(count)]


def realize(prompt: SoundPrompt, rng: random.Random) -> Sound:
    """Draw every attribute the prompt leaves free; the result satisfies the prompt."""
    text, timbre = format_prompt(prompt), prompt.timbre or rng.choice(TIMBRES)
    extras = dict(peak=rng.uniform(0.3, 0.9), noise=10 ** rng.uniform(-3.7, -3.0), seed=rng.randrange(2**31))
    if prompt.kind == "rhythm":
        hits = tuple(Hit(prompt.hit, t, rng.uniform(0.6, 1.0)) for t in _hit_onsets(prompt.count, rng))
        return Sound(text, hits=hits, **extras)
    if prompt.kind == "note":
        onset = rng.uniform(0.01, 0.08)
        notes = (_note(_pick_pitch(prompt.notes[0], rng), timbre, onset, rng.uniform(0.6, 0.92 - onset), rng),)
    elif prompt.kind == "sequence":
        first = rng.uniform(0.01, 0.05)
        second = first + rng.uniform(0.42, 0.5)
        lengths = rng.uniform(0.34, second - first - 0.06), rng.uniform(0.34, 0.98 - second)
        notes = tuple(_note(_pick_pitch(spec, rng), timbre, t, d, rng)
                      for spec, t, d in zip(prompt.notes, (first, second), lengths))
    else:
        root = 60 + LETTERS[prompt.root]
        onset, duration = rng.uniform(0.01, 0.08), rng.uniform(0.6, 0.85)
        notes = tuple(_note(root + step, timbre, onset + rng.uniform(0, 0.01), duration, rng)
                      for step in QUALITIES[prompt.quality])
    return Sound(text, notes=notes, **extras)


def _envelope(note: Note, t: np.ndarray) -> np.ndarray:
    attack, release, _ = ENVELOPES[note.timbre]
    local = t - note.onset
    rise = np.clip(local / attack, 0.0, 1.0)
    fall = np.clip((note.duration - local) / release, 0.0, 1.0)
    return rise * fall * (local >= 0)


def synth_note(note: Note, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Additive synthesis of one note over the sample times ``t`` (seconds)."""
    f0 = hz(note.midi + note.detune / 100)
    local = np.maximum(t - note.onset, 0.0)
    # Flute vibrato: 5 Hz, +-6 cents, as a phase integral of the frequency deviation.
    vibrato = 0.06 / 12 * np.log(2) * f0 / (2 * np.pi * 5.0) * (1 - np.cos(2 * np.pi * 5.0 * local))
    vibrato = vibrato if note.timbre == "flute" else 0.0
    _, _, decay = ENVELOPES[note.timbre]
    out = np.zeros_like(t)
    for h, weight in enumerate(HARMONICS[note.timbre], start=1):
        if h * f0 > BAND_LIMIT:
            break
        partial = weight * h ** -note.tilt * np.sin(2 * np.pi * h * (f0 * local + vibrato) + rng.uniform(0, 2 * np.pi))
        if decay:  # a struck string: upper partials die faster (Fletcher & Rossing, ch. 12)
            partial *= np.exp(-local * (1 + 0.4 * (h - 1)) / decay)
        out += partial
    return note.level * _envelope(note, t) * out


def synth_hit(hit: Hit, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A click: a 2-3.4 kHz damped sinusoid with a noise burst (3 ms decay). A drum hit: a sine gliding
    from 200 Hz to 110 Hz with a 60 ms decay (a membrane's pitch drop), plus a 10 ms noise burst."""
    local = t - hit.onset
    active = local >= 0
    local = np.maximum(local, 0.0)
    if hit.kind == "click":
        body = np.sin(2 * np.pi * rng.uniform(2000, 3400) * local) + 0.5 * rng.standard_normal(t.shape)
        wave = body * np.exp(-local / 0.003)
    else:
        freq_phase = 110 * local + 90 * 0.04 * (1 - np.exp(-local / 0.04))   # integral of 110 + 90 e^{-t/0.04}
        wave = np.sin(2 * np.pi * freq_phase) * np.exp(-local / 0.06)
        wave += 0.3 * rng.standard_normal(t.shape) * np.exp(-local / 0.01)
    return hit.level * active * wave


def render_sound(sound: Sound) -> np.ndarray:
    """The clip of a ``Sound``: float32 ``[CLIP_SAMPLES]`` in [-1, 1]."""
    t = np.arange(CLIP_SAMPLES) / SAMPLE_RATE
    rng = np.random.default_rng(sound.seed)
    wave = np.zeros(CLIP_SAMPLES)
    for note in sound.notes:
        wave += synth_note(note, t, rng)
    for hit in sound.hits:
        wave += synth_hit(hit, t, rng)
    if sound.hits:  # keep clicks in band: remove content above BAND_LIMIT with an FFT brick wall
        spectrum = np.fft.rfft(wave)
        spectrum[np.fft.rfftfreq(CLIP_SAMPLES, 1 / SAMPLE_RATE) > BAND_LIMIT] = 0
        wave = np.fft.irfft(spectrum, CLIP_SAMPLES)
    wave *= sound.peak / max(np.abs(wave).max(), 1e-9)
    wave += sound.noise * rng.standard_normal(CLIP_SAMPLES)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def sound_for(prompt: str, seed: int = 0) -> Sound:
    """The sound ``render(prompt, seed)`` plays."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return realize(parse_prompt(prompt), random.Random(f"difflab-sounds-render-{seed}"))


def render(prompt: str, seed: int = 0) -> np.ndarray:
    """A real clip that satisfies ``prompt`` (canonical grammar): float32 ``[CLIP_SAMPLES]`` in [-1, 1]."""
    return render_sound(sound_for(prompt, seed))


def _note_spec(rng: random.Random) -> NoteSpec:
    return NoteSpec(pitch=rng.choice(PITCHES)) if rng.random() < 0.6 else NoteSpec(register=rng.choice(("low", "high")))


def sample_prompt(rng: random.Random) -> SoundPrompt:
    """A random canonical prompt as the dataset draws them (instrument named 70% of the time)."""
    kind = rng.choices(tuple(FORM_WEIGHTS), weights=tuple(FORM_WEIGHTS.values()))[0]
    timbre = rng.choice(TIMBRES) if rng.random() < 0.7 else None
    if kind == "rhythm":
        return SoundPrompt("rhythm", count=rng.randint(1, 5), hit=rng.choice(tuple(HITS)))
    if kind == "chord":
        root, quality = rng.choice(tuple(LETTERS)), rng.choice(tuple(QUALITIES))
        return SoundPrompt("chord", timbre=timbre, root=root, quality=quality)
    if kind == "note":
        return SoundPrompt("note", (_note_spec(rng),), timbre)
    if rng.random() < 0.5:
        registers = rng.choice((("low", "high"), ("high", "low")))
        return SoundPrompt("sequence", tuple(NoteSpec(register=r) for r in registers), timbre)
    first, second = rng.sample(PITCHES, 2)
    return SoundPrompt("sequence", (NoteSpec(pitch=first), NoteSpec(pitch=second)), timbre)


def has_held_out(sound: Sound, prompt: SoundPrompt) -> bool:
    if prompt.kind == "chord" and (prompt.root, prompt.quality) in HELD_OUT_CHORDS:
        return True
    return prompt.kind != "chord" and any((n.pitch, n.timbre) in HELD_OUT for n in sound.notes)


def held_out_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` canonical prompts that name a held-out combination (cycling through them, varied by ``seed``)."""
    rng = random.Random(f"difflab-sounds-held-out-{seed}")
    pool = [format_prompt(SoundPrompt("note", (NoteSpec(pitch=pitch),), timbre)) for pitch, timbre in HELD_OUT]
    pool += [format_prompt(SoundPrompt("chord", root=root, quality=quality)) for root, quality in HELD_OUT_CHORDS]
    rng.shuffle(pool)
    return [pool[i % len(pool)] for i in range(n)]


class SoundsDataset(ProceduralSplit):
    """Captioned sounds, synthesised on the fly and identical on every run.

    Items are ``{"audio": float32 [CLIP_SAMPLES] in [-1, 1], "caption": str, "prompt": canonical prompt,
    "sound": Sound}``; ``difflab.data.spectrogram.waveform_to_spectrogram`` turns audio into the model's
    ``[1, resolution, 64]`` image. Train captions are drawn from several phrasings; val and test captions
    are the canonical prompts the judge parses. Train never plays the ``HELD_OUT`` (pitch, instrument)
    pairs nor the ``HELD_OUT_CHORDS``; val and test do. Each split has its own seed stream.
    """

    world = "sounds"
    channels = 1                  # one log-mel "image" channel
    media = "audio"               # the trainer keeps the audio codec (spectrogram <-> waveform)
    num_classes = None            # conditioned on captions
    sample_rate = SAMPLE_RATE
    preview_prompts = ("a C4 note on a flute", "a low note then a high note", "an A minor chord", "three clicks")

    def __init__(self, split: str = "train", resolution: int = N_MELS, length: int | None = None):
        self.init_split(split, length)
        if resolution != N_MELS:
            raise ValueError(f"resolution is the number of mel bands and must be {N_MELS} for sounds, "
                             f"got {resolution!r}")
        self.resolution = resolution

    def sound(self, index: int) -> tuple[Sound, str]:
        """The sound and caption of item ``index`` (cheap: nothing is synthesised)."""
        return self.draw(index, sample_prompt, realize, has_held_out, paraphrase)

    def __getitem__(self, index: int) -> dict:
        sound, caption = self.sound(index)
        return {"audio": render_sound(sound), "caption": caption, "prompt": sound.prompt, "sound": sound}
