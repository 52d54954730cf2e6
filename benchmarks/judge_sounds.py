"""Measure the sounds judge: accept real clips, reject clips checked against a prompt with one attribute changed.

    python benchmarks/judge_sounds.py [--n 300] [--iterations 32]

Every test-split clip is judged twice: as synthesised ("real") and after a round trip through the model's
spectrogram (``waveform_to_spectrogram`` then ``spectrogram_to_waveform``: mel inversion + Griffin-Lim),
which is what a generated clip looks like. Each is checked against its own prompt (accept) and against
every prompt that changes one attribute (reject): another named pitch (any, and the next natural note),
the other register, the notes of a sequence swapped, another chord root or quality, the count +-1, the
other kind of hit, another instrument. White noise (-20 dBFS) and silence are judged against each clip's
prompt, and the held-out prompts' real renders are judged as well. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace

import numpy as np
import torch

from difflab.data.sounds import SoundsDataset, held_out_prompts, render
from difflab.data.sounds_grammar import (HITS, LETTERS, PITCHES, QUALITIES, TIMBRES, NoteSpec, format_prompt,
                                         parse_prompt)
from difflab.data.spectrogram import CLIP_SAMPLES, N_MELS, spectrogram_to_waveform, waveform_to_spectrogram
from difflab.metrics.pitch import judge_sound


def _other(options, value, rng: random.Random):
    return rng.choice([o for o in options if o != value])


def _other_note(spec: NoteSpec, rng: random.Random, neighbour: bool = False) -> NoteSpec:
    if spec.register:
        return NoteSpec(register=_other(("low", "high"), spec.register, rng))
    if neighbour:
        i = PITCHES.index(spec.pitch)
        return NoteSpec(pitch=PITCHES[i + 1 if i == 0 or (i < len(PITCHES) - 1 and rng.random() < 0.5) else i - 1])
    return NoteSpec(pitch=_other(PITCHES, spec.pitch, rng))


def changed_prompts(prompt: str, rng: random.Random) -> dict[str, str]:
    """``{attribute: prompt with that one attribute changed}`` for a canonical prompt."""
    p, out = parse_prompt(prompt), {}
    if p.kind == "rhythm":
        count = p.count + rng.choice([d for d in (-1, 1) if 1 <= p.count + d <= 5])
        out["count +-1"] = replace(p, count=count)
        out["hit kind"] = replace(p, hit=_other(tuple(HITS), p.hit, rng))
    elif p.kind == "chord":
        out["chord root"] = replace(p, root=_other(tuple(LETTERS), p.root, rng))
        out["chord quality"] = replace(p, quality=_other(tuple(QUALITIES), p.quality, rng))
    elif p.kind == "note":
        spec = p.notes[0]
        kind = "pitch" if spec.pitch else "register"
        out[kind] = replace(p, notes=(_other_note(spec, rng),))
        if spec.pitch:
            out["pitch, next natural"] = replace(p, notes=(_other_note(spec, rng, neighbour=True),))
    else:
        out["pitch order"] = replace(p, notes=p.notes[::-1])
        if p.notes[0].pitch:
            second = _other_note(p.notes[1], rng)
            while second == p.notes[0]:
                second = _other_note(p.notes[1], rng)
            out["pitch"] = replace(p, notes=(p.notes[0], second))
    if p.timbre and p.kind != "chord":
        out["instrument"] = replace(p, timbre=_other(TIMBRES, p.timbre, rng))
    return {k: format_prompt(v) for k, v in out.items()}


def round_trip(waves: np.ndarray, iterations: int, sigma: float = 0.0, batch: int = 32) -> np.ndarray:
    """Waveform -> spectrogram (+ N(0, sigma^2) per cell, a stand-in for a model's error) -> waveform."""
    generator, outs = torch.Generator().manual_seed(0), []
    for i in range(0, len(waves), batch):
        spec = waveform_to_spectrogram(torch.from_numpy(waves[i: i + batch]))
        spec = spec + sigma * torch.randn(spec.shape, generator=generator)
        outs.append(spectrogram_to_waveform(spec, iterations).numpy())
    return np.concatenate(outs)


def rates(waves, prompts, seed: int) -> dict[str, list[bool]]:
    """``{row: [passed?]}``: acceptance per form, rejection per changed attribute."""
    rng, rows = random.Random(seed), {}
    for wave, prompt in zip(waves, prompts):
        ok = judge_sound(wave, prompt)["ok"]
        rows.setdefault("accept: all", []).append(ok)
        rows.setdefault(f"accept: {parse_prompt(prompt).kind}", []).append(ok)
        for attribute, changed in changed_prompts(prompt, rng).items():
            rows.setdefault(f"reject: {attribute}", []).append(not judge_sound(wave, changed)["ok"])
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="test-split clips")
    parser.add_argument("--iterations", type=int, default=32, help="Griffin-Lim iterations of the round trip")
    parser.add_argument("--sigma", type=float, default=0.1, help="noise added to the spectrogram in the third column")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = SoundsDataset("test", length=args.n)
    prompts = [data.sound(i)[0].prompt for i in range(args.n)]
    real = np.stack([data[i]["audio"] for i in range(args.n)])
    noise = np.random.default_rng(0).standard_normal((64, CLIP_SAMPLES)).astype(np.float32) * 0.1  # -20 dBFS
    silence = np.zeros((64, CLIP_SAMPLES), np.float32)
    held = held_out_prompts(70, seed=1)
    held_waves = np.stack([render(p, seed=i) for i, p in enumerate(held)])
    t = time.time()
    versions = {"real": lambda w: w, "reconstructed": lambda w: round_trip(w, args.iterations),
                f"spectrogram + N(0, {args.sigma}^2), reconstructed":
                    lambda w: round_trip(w, args.iterations, args.sigma)}
    columns = {}
    for column, version in versions.items():
        columns[column] = rates(version(real), prompts, 0)
        for name, clips in (("white noise -20 dBFS", noise), ("silence", silence)):
            waves = version(clips)
            columns[column][f"reject: {name}"] = [not judge_sound(w, p)["ok"] for w, p in zip(waves, prompts)]
        held_results = [judge_sound(w, p)["ok"] for w, p in zip(version(held_waves), held)]
        columns[column]["accept: held-out prompts"] = held_results
    print(f"`python benchmarks/judge_sounds.py --n {args.n} --iterations {args.iterations} --sigma {args.sigma}`\n")
    print(f"| row | n | {' | '.join(columns)} |\n|---|---|" + "---|" * len(columns))
    for row in sorted(columns["real"], key=lambda r: (not r.startswith("accept"), r)):
        cells = " | ".join(f"{np.mean(c[row]):.3f}" for c in columns.values())
        print(f"| {row} | {len(columns['real'][row])} | {cells} |")
    print(f"\n{N_MELS} mels, {args.iterations} Griffin-Lim iterations; "
          f"{time.time() - t:.0f} s on {args.threads} threads")


if __name__ == "__main__":
    main()
