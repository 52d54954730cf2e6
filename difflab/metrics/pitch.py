"""The sounds judge: does a clip play what its prompt says?

``judge_sound(wave, prompt)`` parses the prompt with the sounds grammar (``difflab.data.sounds_grammar``)
and measures the waveform itself (its own FFTs, not the model's mel spectrogram):

- **pitch**: subharmonic summation over a log-frequency spectrum (Hermes, JASA 1988), the fundamental
  required to be present so that no sub-octave wins, refined by least squares over the harmonics' peak
  frequencies, ``f0 = sum_h a_h h f_h / sum_h a_h h^2``. A named pitch passes within
  ``PITCH_TOLERANCE`` = 0.5 semitone (the nearest note name is the named one); a register ("low",
  "high") below / above ``REGISTER_SPLIT`` (E4 + 1/2, mid-way in the C4 octave the world leaves empty).
- **chords**: notes found one by one, each found note's harmonics cancelled before the next search
  (iterative estimation and cancellation, Klapuri, IEEE TSAP 2003); the three notes must be nearest to
  the named triad among all 24 major and minor triads, each within ``CHORD_TOLERANCE``.
- **sequences**: the active span is split where two spectrally steady halves differ most (binary
  segmentation); each half gets its pitch, and the names or registers and the order must hold.
- **rhythms**: hits are envelope peaks with ``HIT_PROMINENCE_DB`` of prominence; the count must be exact,
  every hit must decay (percussive), and the spectral centroid tells clicks from drum hits.
- **instrument** (notes and sequences): a decaying envelope means piano; else the harmonic profile: weak
  even harmonics mean clarinet, little power above the fundamental flute, else organ.

Silence fails every prompt; a pitched prompt needs its power on the detected harmonics well beyond chance
(``harmonicity``), which noise never has. Thresholds: see ``benchmarks/judge_sounds.py`` and its table.
"""

from __future__ import annotations

from itertools import permutations

import numpy as np
from scipy.ndimage import gaussian_filter1d, maximum_filter1d
from scipy.signal import find_peaks

from difflab.data.sounds_grammar import PITCH_CLASS_NAMES, QUALITIES, SoundPrompt, hz, midi, parse_prompt, pitch_name

PITCH_TOLERANCE = 0.5        # semitones between the detected and the named pitch
REGISTER_SPLIT = 64.5        # MIDI; "low" is below, "high" above (the world plays C3..B3 and C5..C6)
BAND = (60.0, 4000.0)        # Hz analysed
SILENT_DBFS = -50.0          # RMS level below which a clip is silent
MIN_HARMONICITY = 0.5        # excess share of the band's power near a detected note's harmonics (see harmonicity)
HARMONIC_WIDTH = 0.4         # semitones either side of a harmonic
HARMONIC_WIDTH_HZ = 25.0     # and at least this (a mel band of the model's spectrogram smears a partial so far)
FUNDAMENTAL_MIN = 0.1        # a candidate's fundamental must reach this share of the strongest peak (amplitude)
CANCEL_WIDTH = 0.8           # semitones either side of a found note's harmonics cleared before the next search
MIN_INTERVAL = 2.5           # semitones: notes closer than this to a found note are not searched
MIN_SEPARATION_HZ = 35.0     # nor closer than this (1.5 mel bands of the model's spectrogram at C3)
CHORD_TOLERANCE = 0.75      # semitones a chord note may sit from the nearest triad's tone
CHORD_NEXT_RATIO = 0.15      # in a chord, whose notes share harmonics, the 2nd and 3rd notes may be weaker
NEXT_NOTE_RATIO = 0.35       # a further note must have this share of the first note's salience
HIT_PROMINENCE_DB = 10.0     # a hit rises this far above the envelope between hits
HIT_DECAY_DB = 10.0          # and falls this far within HIT_DECAY_S
HIT_DECAY_S = 0.15
CLICK_CENTROID_HZ = 1000.0   # clicks are brighter, drum hits darker
PIANO_DECAY_DB_PER_S = -12.0
MIN_NOTE_S = 0.15            # each note of a sequence lasts at least this
FRAME, FRAME_HOP = 512, 128  # envelope analysis: 32 ms windows every 8 ms
CELL = 0.1                   # semitones per log-frequency cell
MAX_HARMONICS = 12
GRID_MIDI = (33.0, 108.0)    # log-frequency grid (A1..C8)
CANDIDATES = (45.0, 90.0)    # fundamental search range (A2..F#6)
Spectrum = tuple[np.ndarray, np.ndarray]   # (frequencies in Hz, magnitudes) of ``magnitude_spectrum``


def _requirement(check: str, name: str, ok: bool, reason: str) -> dict:
    return {"requirement": name, "ok": bool(ok), "reason": reason, "check": check}


def magnitude_spectrum(segment: np.ndarray, sample_rate: int) -> Spectrum:
    """Hann-windowed magnitude spectrum zero-padded to 2^16 points (0.24 Hz bins at 16 kHz)."""
    n = 1 << 16
    return np.fft.rfftfreq(n, 1 / sample_rate), np.abs(np.fft.rfft(segment * np.hanning(len(segment)), n))


def log_frequency(freqs: np.ndarray, mags: np.ndarray) -> np.ndarray:
    """Max-pool the linear spectrum into cells of ``CELL`` semitones over ``GRID_MIDI``."""
    edges = hz(np.arange(GRID_MIDI[0] - CELL / 2, GRID_MIDI[1] + CELL, CELL))
    index = np.searchsorted(freqs, edges)
    pooled = np.maximum.reduceat(mags, index[:-1])
    pooled[index[:-1] >= index[1:]] = 0.0  # a cell narrower than a bin (never at 2^16 points above A1)
    return pooled


def _cell(midi_number: float) -> int:
    return int(round((midi_number - GRID_MIDI[0]) / CELL))


def salience(cells: np.ndarray, reference: float) -> np.ndarray:
    """Subharmonic summation ``S(m) = sum_h h^-1/2 sqrt(A(m + 12 log2 h) / reference)`` for every candidate
    cell ``m``, zero where the fundamental itself is weaker than ``FUNDAMENTAL_MIN`` of ``reference`` (the
    strongest peak)."""
    compressed = np.sqrt(maximum_filter1d(cells, size=int(2 * HARMONIC_WIDTH / CELL) + 1) / max(reference, 1e-12))
    lo, hi = _cell(CANDIDATES[0]), _cell(CANDIDATES[1])
    total = np.zeros(hi - lo)
    for h in range(1, MAX_HARMONICS + 1):
        offset = int(round(12 * np.log2(h) / CELL))
        total[: len(compressed[lo + offset: hi + offset])] += h ** -0.5 * compressed[lo + offset: hi + offset]
    # The max filter makes each peak a plateau HARMONIC_WIDTH wide; smoothing puts the maximum at its centre.
    total = gaussian_filter1d(total, HARMONIC_WIDTH / CELL / 2, mode="constant")
    return np.where(compressed[lo:hi] ** 2 >= FUNDAMENTAL_MIN, total, 0.0)


def refine(freqs: np.ndarray, mags: np.ndarray, f0: float) -> float:
    """Least-squares f0 from the harmonics' interpolated peak frequencies ``f_h``, weighted by amplitude."""
    num = den = 0.0
    window = 2 ** (1.5 * HARMONIC_WIDTH / 12)
    for h in range(1, MAX_HARMONICS + 1):
        if h * f0 * window > BAND[1]:
            break
        lo, hi = np.searchsorted(freqs, (h * f0 / window, h * f0 * window))
        k = lo + int(np.argmax(mags[lo:hi]))
        if mags[k] < 0.05 * mags.max() or not lo < k < hi - 1:
            continue
        a, b, c = np.log(mags[k - 1: k + 2] + 1e-12)
        f_h = freqs[k] + 0.5 * (a - c) / (a - 2 * b + c) * (freqs[1] - freqs[0])  # parabolic peak
        num, den = num + mags[k] * h * f_h, den + mags[k] * h * h
    return num / den if den else f0


def _too_close(candidate: np.ndarray | float, found: list[float]) -> np.ndarray | bool:
    """Within ``MIN_INTERVAL`` semitones or ``MIN_SEPARATION_HZ`` of a found note: its own smeared partial."""
    close = np.zeros_like(candidate, dtype=bool)
    for note in found:
        hertz = np.abs(hz(candidate) - hz(note))
        close = close | (np.abs(candidate - note) < MIN_INTERVAL) | (hertz < MIN_SEPARATION_HZ)
    return close


def detect_notes(spectrum: Spectrum, max_notes: int = 4, next_ratio: float = NEXT_NOTE_RATIO) -> list[float]:
    """Fractional MIDI pitches of up to ``max_notes`` notes in a ``magnitude_spectrum``, strongest first; a
    further note needs ``next_ratio`` of the first one's salience and must not be ``_too_close`` to a found one."""
    freqs, mags = spectrum
    cells = log_frequency(freqs, mags)
    found, first, reference = [], None, cells.max()
    candidates = CANDIDATES[0] + CELL * np.arange(_cell(CANDIDATES[1]) - _cell(CANDIDATES[0]))
    for _ in range(max_notes):
        s = np.where(_too_close(candidates, found), 0.0, salience(cells, reference))
        best = int(np.argmax(s))
        if s[best] <= 0 or (first is not None and s[best] < next_ratio * first):
            break
        first = first or s[best]
        note = 12 * np.log2(refine(freqs, mags, hz(CANDIDATES[0] + best * CELL)) / 440.0) + 69
        if not _too_close(note, found):
            found.append(float(note))
        for h in range(1, MAX_HARMONICS + 1):  # cancel this note's partials before looking for the next
            centre, width = _cell(note + 12 * np.log2(h)), int(CANCEL_WIDTH / CELL)
            cells[max(centre - width, 0): centre + width + 1] = 0.0
    return found


def near_harmonic(freqs: np.ndarray, centre: float) -> np.ndarray:
    """Bins within ``HARMONIC_WIDTH`` semitones (at least ``HARMONIC_WIDTH_HZ``) of ``centre`` Hz."""
    return np.abs(freqs - centre) <= max(centre * (2 ** (HARMONIC_WIDTH / 12) - 1), HARMONIC_WIDTH_HZ)


def harmonicity(spectrum: Spectrum, notes: list[float]) -> float:
    """How much more of the band's power lies near the harmonics of ``notes`` than chance would put there.

    ``(share - covered) / (1 - covered)``, where ``share`` is the power within ``near_harmonic`` of a
    harmonic and ``covered`` the fraction of the band those windows span (the share of a flat spectrum).
    A tone scores near 1; white noise, or a burst whose energy merely overlaps some windows, near 0.
    """
    freqs, mags = spectrum
    band = (freqs >= BAND[0]) & (freqs <= BAND[1])
    near = np.zeros_like(band)
    for note in notes:
        for h in range(1, MAX_HARMONICS + 1):
            near |= near_harmonic(freqs, h * hz(note))
    power = mags ** 2
    share = power[band & near].sum() / max(power[band].sum(), 1e-20)
    covered = (band & near).sum() / band.sum()
    return float((share - covered) / (1 - covered))


def _frames(wave: np.ndarray, size: int) -> np.ndarray:
    """Hann-windowed frames of ``size`` samples, frame t centred on sample ``t * FRAME_HOP``."""
    padded = np.pad(wave, size // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, size)[::FRAME_HOP][: len(wave) // FRAME_HOP + 1]
    return frames * np.hanning(size)


def band_frames(wave: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Band power in dB and spectral centroid in Hz per ``FRAME``-sample frame."""
    power = np.abs(np.fft.rfft(_frames(wave, FRAME), axis=1)) ** 2
    freqs = np.fft.rfftfreq(FRAME, 1 / sample_rate)
    band = (freqs >= BAND[0]) & (freqs <= BAND[1])
    energy = power[:, band].sum(1)
    return 10 * np.log10(energy + 1e-12), (power[:, band] * freqs[band]).sum(1) / np.maximum(energy, 1e-20)


def active_span(db: np.ndarray, below_peak: float = 30.0) -> tuple[int, int]:
    """First and one-past-last frame within ``below_peak`` dB of the loudest frame."""
    active = np.flatnonzero(db > db.max() - below_peak)
    return int(active[0]), int(active[-1]) + 1


def split_point(wave: np.ndarray, sample_rate: int, span: tuple[int, int]) -> int:
    """The frame that best splits ``span`` into two spectrally steady halves (the second note's onset).

    Binary segmentation (Scott & Knott, Biometrics 1974): over compressed frame spectra ``x_t``, the split
    ``k`` maximises ``k (T - k) / T * ||mean(x_<k) - mean(x_>=k)||^2``, the variance between the halves.
    Unlike an onset detector, it ignores the amplitude flutter of a Griffin-Lim reconstruction and still
    finds a legato change of pitch. Each half keeps at least ``MIN_NOTE_S``.
    """
    x = np.sqrt(np.abs(np.fft.rfft(_frames(wave, 1024)[span[0]: span[1]], axis=1)))
    total, n, k = x.sum(0), len(x), np.arange(1, span[1] - span[0])
    before = np.cumsum(x, 0)[:-1]
    gap = before / k[:, None] - (total - before) / (n - k)[:, None]
    score = k * (n - k) / n * (gap ** 2).sum(1)
    margin = int(MIN_NOTE_S * sample_rate / FRAME_HOP)
    score[: margin] = score[len(score) - margin:] = -1.0
    return span[0] + 1 + int(np.argmax(score))


def hits(db: np.ndarray, sample_rate: int) -> np.ndarray:
    """Frames of the envelope peaks that stand ``HIT_PROMINENCE_DB`` above their surroundings."""
    floor = db.max() - 50.0
    peaks, _ = find_peaks(np.maximum(db, floor), prominence=HIT_PROMINENCE_DB,
                          distance=max(1, int(0.08 * sample_rate / FRAME_HOP)), height=db.max() - 35.0)
    return peaks


def decay_rate(db: np.ndarray, sample_rate: int, span: tuple[int, int]) -> float:
    """Envelope slope in dB/s over a note's ``span``: the median level of its last third minus that of its
    first third (after a 40 ms attack, before a 60 ms release), over the time between the thirds' centres."""
    lo = span[0] + int(0.04 * sample_rate / FRAME_HOP)
    hi = max(span[1] - int(0.06 * sample_rate / FRAME_HOP), lo + 3)
    third = (hi - lo) // 3
    early, late = np.median(db[lo: lo + third]), np.median(db[hi - third: hi])
    return float((late - early) / (2 * third * FRAME_HOP / sample_rate))


def harmonic_levels(spectrum: Spectrum, note: float, count: int = 5) -> list[float | None]:
    """Power in dB near harmonics 1..count (``near_harmonic``) relative to the fundamental's; None above the
    band. Power summed over the window, not the peak, so a partial smeared by the mel round trip keeps its level."""
    freqs, mags = spectrum
    power, f0 = mags ** 2, hz(note)
    levels = [10 * np.log10(power[near_harmonic(freqs, h * f0)].sum() + 1e-20) if h * f0 < BAND[1] else None
              for h in range(1, count + 1)]
    return [None if v is None else v - levels[0] for v in levels]


def instrument(decay: float, levels: list[float | None]) -> str:
    """piano: decaying; clarinet: even harmonics 15 dB under the odd; flute: harmonics 2-4 hold under -5 dB
    of the fundamental's power together; organ: the rest."""
    if decay < PIANO_DECAY_DB_PER_S:
        return "piano"
    even = [v for v in levels[1::2] if v is not None]
    odd = [v for v in levels[2::2] if v is not None]
    if even and odd and max(odd) - max(even) > 15.0:
        return "clarinet"
    upper = [10 ** (v / 10) for v in levels[1:4] if v is not None]
    return "flute" if 10 * np.log10(sum(upper) + 1e-12) < -5.0 else "organ"


def _describe(note: float) -> str:
    nearest = int(round(note))
    return f"{pitch_name(nearest)}{100 * (note - nearest):+.0f}c"


def _note_requirement(label: str, spec, note: float) -> dict:
    if spec.pitch:
        error = note - midi(spec.pitch)
        return _requirement("pitch", f"{label} is {spec.pitch}", abs(error) <= PITCH_TOLERANCE,
                            f"heard {_describe(note)}, {error:+.2f} semitones off (at most {PITCH_TOLERANCE})")
    heard = "low" if note < REGISTER_SPLIT else "high"
    return _requirement("register", f"{label} is {spec.register}", heard == spec.register,
                        f"heard {_describe(note)} ({heard}; split at {_describe(REGISTER_SPLIT)})")


def _pitched_segment(wave, sample_rate, db, span, max_notes, checks, key, next_ratio=NEXT_NOTE_RATIO) -> list[float]:
    """Notes, harmonicity and instrument of the frames ``span``, written to ``checks[key]``."""
    spectrum = magnitude_spectrum(wave[span[0] * FRAME_HOP: span[1] * FRAME_HOP], sample_rate)
    notes = detect_notes(spectrum, max_notes, next_ratio)
    checks[key] = {"notes": [_describe(n) for n in notes],
                   "harmonicity": round(harmonicity(spectrum, notes), 3) if notes else 0.0}
    if notes:
        checks[key]["instrument"] = instrument(decay_rate(db, sample_rate, span), harmonic_levels(spectrum, notes[0]))
    return notes


def _tonal(checks: dict, keys) -> dict:
    worst = min(checks[k]["harmonicity"] for k in keys)
    return _requirement("tonal", "a pitched sound", worst >= MIN_HARMONICITY,
                        f"harmonicity {worst:.2f}: the share of power on the detected harmonics beyond chance "
                        f"(at least {MIN_HARMONICITY})")


def _instrument_requirement(p: SoundPrompt, checks: dict, keys) -> list[dict]:
    if not p.timbre:
        return []
    heard = [checks[k].get("instrument") for k in keys]
    return [_requirement("instrument", f"on a {p.timbre}", all(h == p.timbre for h in heard),
                         f"sounds like {' then '.join(str(h) for h in heard)}")]


def _judge_note(p, wave, sample_rate, db, checks) -> list[dict]:
    span = active_span(db)
    notes = _pitched_segment(wave, sample_rate, db, span, 4, checks, "note")
    if not notes:
        return [_requirement("tonal", "a pitched sound", False, "no harmonic series found")]
    out = [_tonal(checks, ["note"]), _note_requirement("the note", p.notes[0], notes[0]),
           _requirement("single", "one note", len(notes) == 1, f"heard {', '.join(checks['note']['notes'])}")]
    return out + _instrument_requirement(p, checks, ["note"])


def nearest_triad(notes: list[float]) -> tuple[int, str, float]:
    """``(root pitch class, quality, largest deviation)`` of the major or minor triad whose tones, matched one
    to one and modulo octaves, leave the least sum of squared deviations from ``notes`` (in semitones)."""
    best = (float("inf"), 0, "major", 0.0)
    for root in range(12):
        for quality, steps in QUALITIES.items():
            for order in permutations(steps):
                gaps = [(n - root - step + 6) % 12 - 6 for n, step in zip(notes, order)]
                cost = sum(g * g for g in gaps)
                if cost < best[0]:
                    best = (cost, root, quality, max(abs(g) for g in gaps))
    return best[1], best[2], best[3]


def _judge_chord(p, wave, sample_rate, db, checks) -> list[dict]:
    notes = _pitched_segment(wave, sample_rate, db, active_span(db), 3, checks, "chord", CHORD_NEXT_RATIO)
    if not notes:
        return [_requirement("tonal", "a pitched sound", False, "no harmonic series found")]
    heard, want = ", ".join(checks["chord"]["notes"]), f"{p.root} {p.quality}"
    if len(notes) < 3:
        return [_tonal(checks, ["chord"]), _requirement("chord", want, False, f"heard only {heard}")]
    root, quality, deviation = nearest_triad(notes)
    got = checks["chord"]["triad"] = f"{PITCH_CLASS_NAMES[root]} {quality}"
    return [_tonal(checks, ["chord"]), _requirement("chord", want, got == want and deviation <= CHORD_TOLERANCE,
                                                    f"heard {heard}: nearest triad {got}, a note {deviation:.2f} "
                                                    f"semitones off (at most {CHORD_TOLERANCE})")]


def _judge_sequence(p, wave, sample_rate, db, checks) -> list[dict]:
    span = active_span(db)
    if (span[1] - span[0]) * FRAME_HOP / sample_rate < 2 * MIN_NOTE_S:
        return [_requirement("tonal", "two pitched notes", False, "the sound is too short for two notes")]
    split = split_point(wave, sample_rate, span)
    margin = int(0.04 * sample_rate / FRAME_HOP)  # the round trip smears an onset by half a 64 ms window
    halves = {"first": (span[0], split - margin), "second": (split + margin, span[1])}
    halves = {k: tuple(np.add(active_span(db[lo:hi]), lo)) for k, (lo, hi) in halves.items()}
    heard = {k: _pitched_segment(wave, sample_rate, db, s, 1, checks, k) for k, s in halves.items()}
    checks["split_s"] = round(split * FRAME_HOP / sample_rate, 3)
    if not all(heard.values()):
        return [_requirement("tonal", "two pitched notes", False, "no harmonic series found in a half")]
    first, second = heard["first"][0], heard["second"][0]
    out = [_tonal(checks, halves), _note_requirement("the first note", p.notes[0], first),
           _note_requirement("the second note", p.notes[1], second)]
    rising = p.notes[0].midi_range()[1] < p.notes[1].midi_range()[0]
    falling = p.notes[0].midi_range()[0] > p.notes[1].midi_range()[1]
    if rising or falling:
        step = (second - first) * (1 if rising else -1)
        out.append(_requirement("order", f"the second note is {'higher' if rising else 'lower'}", step > 0.5,
                                f"heard {_describe(first)} then {_describe(second)}"))
    return out + _instrument_requirement(p, checks, halves)


def _judge_rhythm(p, wave, sample_rate, db, centroid, checks) -> list[dict]:
    peaks = hits(db, sample_rate)
    checks["onsets_s"] = [round(float(k) * FRAME_HOP / sample_rate, 3) for k in peaks]
    out = [_requirement("count", f"exactly {p.count} x {p.hit}", len(peaks) == p.count, f"heard {len(peaks)} hits")]
    if not len(peaks):
        return out
    bright = checks["centroid_hz"] = round(float(np.median(centroid[peaks])))
    kind, reach = "click" if bright > CLICK_CENTROID_HZ else "drum hit", int(HIT_DECAY_S * sample_rate / FRAME_HOP)
    drops = [db[k] - db[k: min(k + reach, end) + 1].min() for k, end in zip(peaks, [*peaks[1:], len(db)])]
    return out + [_requirement("hit", f"{p.hit}s" if p.count > 1 else p.hit, kind == p.hit,
                               f"sounds like {kind}s (centroid {bright:.0f} Hz; clicks above {CLICK_CENTROID_HZ:.0f})"),
                  _requirement("percussive", "short hits", min(drops) >= HIT_DECAY_DB,
                               f"the weakest decay is {min(drops):.0f} dB in {HIT_DECAY_S * 1000:.0f} ms "
                               f"(at least {HIT_DECAY_DB:.0f})")]


def judge_sound(wave, prompt: str, sample_rate: int = 16_000) -> dict:
    """Judge one clip against one canonical prompt.

    Returns ``{"ok", "prompt", "requirements": [{"requirement", "ok", "reason", "check"}, ...], "checks"}``;
    ``ok`` holds when every requirement does; ``check`` names the kind of requirement (``sound``, ``tonal``,
    ``pitch``, ``register``, ``single``, ``order``, ``chord``, ``count``, ``hit``, ``percussive``,
    ``instrument``) and ``checks`` holds the measurements. Raises ``ValueError`` for a prompt outside the
    sounds grammar or a wave that is not a finite 1-D signal.
    """
    parsed = parse_prompt(prompt)
    wave = np.asarray(wave, dtype=np.float64)
    if wave.ndim != 1 or len(wave) < FRAME or not np.isfinite(wave).all():
        raise ValueError(f"wave must be a finite 1-D signal of at least {FRAME} samples, got shape {wave.shape}")
    level = 20 * np.log10(np.sqrt(np.mean(wave ** 2)) + 1e-12)
    checks = {"rms_dbfs": round(float(level), 1)}
    if level < SILENT_DBFS:
        reason = f"RMS {level:.0f} dBFS (at least {SILENT_DBFS:.0f})"
        requirements = [_requirement("sound", "not silent", False, reason)]
    else:
        db, centroid = band_frames(wave, sample_rate)
        if parsed.kind == "rhythm":
            requirements = _judge_rhythm(parsed, wave, sample_rate, db, centroid, checks)
        else:
            judge = {"note": _judge_note, "chord": _judge_chord, "sequence": _judge_sequence}[parsed.kind]
            requirements = judge(parsed, wave, sample_rate, db, checks)
    return {"ok": all(r["ok"] for r in requirements), "prompt": prompt, "requirements": requirements, "checks": checks}


def judge_sounds(waves, prompts, sample_rate: int = 16_000) -> dict:
    """Judge many clips: ``{"n", "accuracy", "rates": {check: share passed}, "counts": {check: n}, "results"}``."""
    if len(waves) != len(prompts):
        raise ValueError(f"got {len(waves)} waves but {len(prompts)} prompts")
    results, passed = [judge_sound(w, p, sample_rate) for w, p in zip(waves, prompts)], {}
    for r in (r for result in results for r in result["requirements"]):
        passed.setdefault(r["check"], []).append(r["ok"])
    return {"n": len(results), "accuracy": float(np.mean([r["ok"] for r in results])) if results else 0.0,
            "rates": {k: float(np.mean(v)) for k, v in passed.items()},
            "counts": {k: len(v) for k, v in passed.items()},
            "results": results}
