"""Fréchet and kernel distances on difflab's own clip and sound features (issue 17, "FID-like scores")."""

import numpy as np
import pytest
import torch

from difflab.data.moving_shapes import render as render_clip
from difflab.data.sounds import render as render_sound
from difflab.metrics.av_distances import audio_features, distances, video_features
from difflab.metrics.distances import frechet_distance

RIGHT = "a red circle moving right"
SOUND = "a low note then a high note"


def clips(prompt, seeds, transform=lambda c: c):
    return [transform(render_clip(prompt, s)) for s in seeds]


def test_video_features_shape_and_determinism():
    a = video_features(clips(RIGHT, range(3)))
    assert a.shape == (3, 192) and a.dtype == torch.float64
    assert torch.equal(a, video_features(clips(RIGHT, range(3))))
    # a float tensor [3, T, H, W] in [-1, 1] (what a pipeline makes) gives the same features as its uint8 frames
    clip = render_clip(RIGHT, 0)
    as_float = torch.from_numpy(clip).permute(3, 0, 1, 2).float() / 127.5 - 1
    assert torch.allclose(video_features([as_float])[0], a[0], atol=1e-6)


def test_a_clip_played_backwards_negates_only_the_displacement():
    forward = video_features(clips(RIGHT, [5]))[0]
    backward = video_features(clips(RIGHT, [5], lambda c: c[::-1].copy()))[0]
    frozen = video_features(clips(RIGHT, [5], lambda c: np.repeat(c[:1], len(c), 0)))[0]
    assert torch.allclose(forward[:64], backward[:64], atol=1e-9)
    assert torch.allclose(forward[64:128], -backward[64:128], atol=1e-9)
    assert torch.allclose(forward[128:], backward[128:], atol=1e-9)
    assert forward[64:128].abs().max() > 0.1                # the clip moves: the displacement is not zero
    assert forward[128:].abs().max() > 0.1 and not frozen[64:].any()   # a frozen clip has no change at all


def test_video_distance_sees_motion_against_the_real_floor():
    real = video_features(clips(RIGHT, range(32)))
    other_seeds = video_features(clips(RIGHT, range(100, 132)))
    backwards = video_features(clips(RIGHT, range(100, 132), lambda c: c[::-1].copy()))
    frozen = video_features(clips(RIGHT, range(100, 132), lambda c: np.repeat(c[:1], len(c), 0)))
    shuffled = video_features(clips(RIGHT, range(100, 132), lambda c: c[[0, 4, 2, 6, 1, 5, 3, 7]]))
    floor = distances(real, other_seeds)
    for wrong in (backwards, frozen, shuffled):
        d = distances(real, wrong)
        assert d["fd"] > 3 * floor["fd"]
        assert d["kid"] > floor["kid"] + 3 * d["kid_std"]


def test_audio_distance_sees_order_and_noise_against_the_real_floor():
    real = audio_features([render_sound(SOUND, s) for s in range(32)])
    assert real.shape == (32, 64) and real.dtype == torch.float64
    other = [render_sound(SOUND, s) for s in range(100, 132)]
    floor = distances(real, audio_features(other))
    rng = np.random.default_rng(0)
    for wrong in ([w[::-1].copy() for w in other],
                  [w + 0.05 * rng.standard_normal(w.shape).astype(np.float32) for w in other]):
        d = distances(real, audio_features(wrong))
        assert d["fd"] > 3 * floor["fd"]
        assert d["kid"] > floor["kid"] + 3 * d["kid_std"]


def test_a_set_against_itself_is_at_distance_zero():
    f = video_features(clips(RIGHT, range(8)))
    assert abs(frechet_distance(f, f)) < 1e-4          # eigenvalue round-off of a rank-7 covariance


@pytest.mark.parametrize("call, message", [
    (lambda: video_features([]), "at least one clip"),
    (lambda: video_features([render_clip(RIGHT, 0), render_clip(RIGHT, 0)[:5]]), "one shape"),
    (lambda: video_features([np.zeros((8, 32, 32, 3), np.float32)]), "uint8"),
    (lambda: audio_features([]), "at least one sound"),
    (lambda: audio_features([np.full(16_384, np.nan, np.float32)]), "non-finite"),
    (lambda: audio_features([np.zeros(1000, np.float32)]), "16384"),
    (lambda: distances(torch.zeros(1, 4, dtype=torch.float64), torch.zeros(5, 4, dtype=torch.float64)), "at least 2"),
])
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_the_sounds_model_is_judged_against_real_sounds():
    import difflab
    from difflab.metrics.av_eval import evaluate_media, format_rows, prompt_sets

    sets = prompt_sets("audio", 3)
    assert len(sets["held-out"]) == len(sets["test"]) == 3
    report = evaluate_media(difflab.Pipeline.from_pretrained("sounds"), sets, batch_size=2, progress=False, steps=2)
    rows = report["rows"]
    assert rows["test (real)"]["overall"] == rows["held-out (real)"]["overall"] == 1.0   # the judge's ceiling
    assert rows["test"]["FD"] > rows["test (real)"]["FD"]           # two sampler steps: far from real sounds
    assert [r["seed"] for r in report["results"]] == [0, 1, 2, 0, 1, 2] and report["per_second"] > 0
    assert format_rows(rows, report["sizes"])[2].startswith("| held-out (3) |")
    with pytest.raises(ValueError, match="no test-split prompt contains"):
        prompt_sets("audio", 3, only="a violin")
