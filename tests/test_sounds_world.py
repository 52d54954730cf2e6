"""The sounds world: grammar, synthesis, splits, held-out combinations, the spectrogram and the judge."""

import numpy as np
import pytest
import torch

from difflab.data import sounds
from difflab.data.sounds_grammar import NoteSpec, SoundPrompt, format_prompt, hz, midi, parse_prompt
from difflab.data.spectrogram import (CLIP_SAMPLES, FRAMES, N_MELS, SAMPLE_RATE, mel_filterbank,
                                      spectrogram_to_waveform, waveform_to_spectrogram)
from difflab.metrics.pitch import judge_sound, judge_sounds

# One clip of every form, and prompts that change one attribute of each (all must be refused).
CLIPS = {
    "a C4 note on a flute": ["a D4 note on a flute", "a B3 note on a flute", "a C5 note on a flute",
                             "a C4 note on an organ"],
    "a high note on an organ": ["a low note on an organ", "a high note on a clarinet"],
    "an E3 note on a piano": ["an F3 note on a piano", "an E3 note on a flute", "a high note on a piano"],
    "a G5 note on a clarinet": ["an A5 note on a clarinet", "a G5 note on a piano"],
    "a low note then a high note on a piano": ["a high note then a low note on a piano",
                                               "a low note then a high note on an organ"],
    "a C4 note then a G4 note": ["a G4 note then a C4 note", "a C4 note then an A4 note"],
    "an A minor chord": ["an A major chord", "a C major chord", "an E minor chord"],
    "a C major chord on an organ": ["a C minor chord on an organ", "a D major chord on an organ"],
    "three clicks": ["two clicks", "four clicks", "three drum hits"],
    "one drum hit": ["two drum hits", "one click"],
}


@pytest.fixture(scope="module")
def clips():
    """Real clips (seed 1) of every prompt in CLIPS and their spectrogram round trips."""
    real = np.stack([sounds.render(p, seed=1) for p in CLIPS])
    rebuilt = spectrogram_to_waveform(waveform_to_spectrogram(torch.from_numpy(real)), iterations=32).numpy()
    return real, rebuilt


@pytest.mark.parametrize("prompt", [
    "a C4 note", "an A4 note on a clarinet", "a low note on an organ", "a high note then a low note",
    "an E5 note then a C3 note on a piano", "an F major chord", "a B minor chord on a flute", "one click",
    "five drum hits", "a low note then a G5 note",
])
def test_parse_format_round_trip(prompt):
    assert format_prompt(parse_prompt(prompt)) == prompt


def test_parse_reads_every_attribute():
    assert parse_prompt("A c4 NOTE on a Flute.") == SoundPrompt("note", (NoteSpec(pitch="C4"),), "flute")
    assert parse_prompt("an a minor chord") == SoundPrompt("chord", root="A", quality="minor")
    assert parse_prompt("three clicks") == SoundPrompt("rhythm", count=3, hit="click")
    assert midi("C4") == 60 and hz(69) == 440.0


@pytest.mark.parametrize("prompt, word", [
    ("a C#4 note", "C#4"), ("a C7 note", "C7"), ("a C4 note on a banjo", "banjo"), ("six clicks", "six"),
    ("three click", "'clicks'"), ("one clicks", "'click'"), ("a C augmented chord", "augmented"),
    ("a low note then a low note", "must differ"), ("a C4 then a G4", "found 'a c4'"), ("", "empty"),
    ("three clicks on a piano", "clicks on a piano"), ("a note then a note then a note", "exactly two"),
])
def test_prompts_outside_the_grammar_are_refused_with_the_reason(prompt, word):
    with pytest.raises(ValueError, match="outside the sounds grammar") as error:
        parse_prompt(prompt)
    assert word in str(error.value)
    assert "timbres flute, clarinet, organ, piano" in str(error.value)


def test_render_is_deterministic_in_range_and_varies_with_the_seed():
    a, b, c = (sounds.render("an A minor chord on a piano", seed=s) for s in (3, 3, 4))
    assert a.dtype == np.float32 and a.shape == (CLIP_SAMPLES,)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.abs(a).max() <= 1.0 and np.abs(a).max() > 0.2
    with pytest.raises(ValueError, match="seed"):
        sounds.render("one click", seed=-1)


def test_dataset_items_are_deterministic_and_train_captions_vary():
    train, test = sounds.SoundsDataset("train", length=50), sounds.SoundsDataset("test")
    item = train[7]
    assert set(item) == {"audio", "caption", "prompt", "sound"} and item["audio"].shape == (CLIP_SAMPLES,)
    assert np.array_equal(item["audio"], sounds.SoundsDataset("train")[7]["audio"])
    assert len(test) == 1000 and len(sounds.SoundsDataset("train")) == 100_000
    captions = [train.sound(i) for i in range(50)]
    assert sum(caption != sound.prompt for sound, caption in captions) > 15
    assert all(test.sound(i)[1] == test.sound(i)[0].prompt for i in range(50))
    assert {parse_prompt(test.sound(i)[0].prompt).kind for i in range(50)} == {"note", "sequence", "chord", "rhythm"}
    assert sounds.SoundsDataset.channels == 1 and sounds.SoundsDataset.sample_rate == SAMPLE_RATE
    assert all(parse_prompt(p) for p in sounds.SoundsDataset.preview_prompts)


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "dev"}, "split"), ({"resolution": 128}, "mel bands"), ({"length": 0}, "length")])
def test_dataset_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sounds.SoundsDataset(**kwargs)


def _held_out(split: str, n: int) -> int:
    data = sounds.SoundsDataset(split, length=n)
    count = 0
    for i in range(n):
        sound, _ = data.sound(i)
        count += sounds.has_held_out(sound, parse_prompt(sound.prompt))
    return count


def test_held_out_combinations_are_absent_from_train_and_present_in_val_and_test():
    assert _held_out("train", 3000) == 0
    assert _held_out("test", 1000) > 10 and _held_out("val", 1000) > 10
    prompts = sounds.held_out_prompts(10, seed=0)
    assert len(prompts) == 10 and len(set(prompts)) == len(sounds.HELD_OUT) + len(sounds.HELD_OUT_CHORDS)
    for prompt in prompts:
        assert sounds.has_held_out(sounds.sound_for(prompt), parse_prompt(prompt))


def test_mel_filterbank_is_a_set_of_triangles_that_sum_to_one():
    fb = mel_filterbank()
    assert fb.shape == (N_MELS, 513) and fb.dtype == torch.float32
    assert (fb.max(1).values <= 1).all() and (fb.max(1).values > 0.7).all()  # narrow low bands peak between bins
    first, last = fb.argmax(1)[[0, -1]].tolist()   # between the first and the last centre, neighbours overlap
    assert torch.allclose(fb.sum(0)[first + 1: last], torch.ones(last - first - 1), atol=1e-5)


def test_spectrogram_shape_range_and_level():
    waves = torch.from_numpy(np.stack([sounds.render("three clicks"), np.zeros(CLIP_SAMPLES, np.float32)]))
    spec = waveform_to_spectrogram(waves)
    assert spec.shape == (2, 1, N_MELS, FRAMES) and spec.dtype == torch.float32
    assert spec.min() >= -1 and spec.max() <= 1 and (spec[1] == -1).all()
    assert waveform_to_spectrogram(waves[0]).shape == (1, 1, N_MELS, FRAMES)
    with pytest.raises(ValueError, match="16384"):
        waveform_to_spectrogram(torch.zeros(1000))


def test_spectrogram_matches_an_independent_numpy_computation():
    """Frame t is centred on sample 256 t, scaled by the window sum; s = 2 (10 log10(M |X|^2) + 80) / 80 - 1."""
    t = np.arange(CLIP_SAMPLES) / SAMPLE_RATE
    x = 0.5 * np.sin(2 * np.pi * 440.0 * t) + 0.2 * np.sin(2 * np.pi * 1234.5 * t)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1024) / 1024)   # periodic Hann
    frame = x[32 * 256 - 512: 32 * 256 + 512] * window
    power = np.abs(np.fft.rfft(frame) / window.sum()) ** 2
    expected = np.clip(2 * (10 * np.log10(mel_filterbank().double().numpy() @ power + 1e-30) + 80) / 80 - 1, -1, 1)
    got = waveform_to_spectrogram(torch.from_numpy(x).float())[0, 0, :, 32].numpy()
    assert np.abs(got - expected).max() < 2e-3
    assert 0.6 < got.max() < 0.85   # amplitude 0.5: -12 dB at the peak bin, plus the Hann lobe's neighbours


def test_round_trip_is_close_and_deterministic(clips):
    """spectrogram -> waveform -> spectrogram: measured 0.02-0.04 mean abs error on cells above -0.5."""
    real, rebuilt = clips
    spec = waveform_to_spectrogram(torch.from_numpy(real))
    again = waveform_to_spectrogram(torch.from_numpy(rebuilt))
    error = (again - spec).abs()
    loud = spec > -0.5
    assert rebuilt.shape == real.shape and np.abs(rebuilt).max() <= 1.0
    assert error.mean() < 0.08
    for e, m in zip(error, loud):
        assert e[m].mean() < 0.05
    assert torch.equal(spectrogram_to_waveform(spec[:2], 8), spectrogram_to_waveform(spec[:2], 8))
    with pytest.raises(ValueError, match="iterations"):
        spectrogram_to_waveform(spec, 0)


def test_judge_accepts_real_clips_and_their_reconstructions(clips):
    for version in clips:
        for wave, prompt in zip(version, CLIPS):
            result = judge_sound(wave, prompt)
            assert result["ok"], (prompt, [r for r in result["requirements"] if not r["ok"]])


def test_judge_rejects_prompts_with_one_attribute_changed(clips):
    for version in clips:
        for wave, changed in zip(version, CLIPS.values()):
            for prompt in changed:
                assert not judge_sound(wave, prompt)["ok"], prompt


def test_silence_and_noise_fail_every_kind_of_prompt():
    noise = np.random.default_rng(0).standard_normal(CLIP_SAMPLES) * 0.1
    for prompt in CLIPS:
        silent = judge_sound(np.zeros(CLIP_SAMPLES), prompt)
        assert not silent["ok"] and silent["requirements"][0]["check"] == "sound"
        assert not judge_sound(noise, prompt)["ok"], prompt


def test_judge_sounds_reports_rates_per_check_and_refuses_bad_input():
    waves = [sounds.render("a C4 note", 0), sounds.render("two clicks", 0)]
    report = judge_sounds(waves, ["a C4 note", "three clicks"])
    assert report["n"] == 2 and report["accuracy"] == 0.5
    assert report["rates"]["pitch"] == 1.0 and report["rates"]["count"] == 0.0
    with pytest.raises(ValueError, match="waves"):
        judge_sounds(waves, ["a C4 note"])
    with pytest.raises(ValueError, match="1-D"):
        judge_sound(np.zeros((2, CLIP_SAMPLES)), "a C4 note")
    with pytest.raises(ValueError, match="outside the sounds grammar"):
        judge_sound(waves[0], "a red circle")
