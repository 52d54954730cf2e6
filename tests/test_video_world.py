"""The moving-shapes world and its motion judge: grammar, rendering, splits, held-out triples, verdicts."""

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.data import load_dataset
from difflab.data import moving_shapes as world
from difflab.data.moving_shapes_grammar import MotionPrompt, format_motion, parse_motion
from difflab.data.shapes import EXTENT
from difflab.data.shapes_grammar import ObjectSpec
from difflab.metrics.motion import axis_right, judge, judge_clip, judge_clips, observe

KIND_PROMPTS = ["a red circle moving right", "an orange square moving left slowly", "a blue cross moving up quickly",
                "a purple triangle falling", "a green triangle bouncing", "a yellow square bouncing quickly",
                "a red circle and a blue square passing each other",
                "a green cross and an orange circle passing each other slowly on a black background"]


@pytest.mark.parametrize("prompt", [p for p in KIND_PROMPTS if "falling" not in p]
                         + ["a red circle moving down on a gray background"])
def test_canonical_prompts_round_trip(prompt):
    assert format_motion(parse_motion(prompt)) == prompt


def test_parse_reads_every_attribute_and_paraphrases():
    assert parse_motion("A red circle falling quickly on a grey background.") == MotionPrompt(
        "move", (ObjectSpec("circle", "red"),), "down", "quickly", "gray")
    assert format_motion(parse_motion("a blue square rising slowly")) == "a blue square moving up slowly"
    p = parse_motion("a red circle and a blue square passing each other")
    assert (p.kind, p.speed, p.objects[1]) == ("pass", None, ObjectSpec("square", "blue"))


@pytest.mark.parametrize("prompt, word", [
    ("a pink circle moving right", "pink"), ("a red hexagon bouncing", "hexagon"),
    ("a red circle moving sideways", "sideways"), ("a red circle", "no motion"), ("", "empty"),
    ("a red circle quickly moving right", "speed words go at the end"),
    ("a red circle passing each other", "exactly two objects"), ("red circle bouncing", "must start"),
    ("a red circle moving right on a purple background", "purple"), ("a circle moving right", "a <colour> <shape>"),
])
def test_prompts_outside_the_grammar_are_refused_with_one_clear_line(prompt, word):
    with pytest.raises(ValueError, match="outside the moving-shapes grammar") as error:
        parse_motion(prompt)
    message = str(error.value)
    assert word in message and "\n" not in message
    assert "colours red, orange" in message and "moving right|left|up|down" in message


def test_render_is_deterministic_with_the_requested_shape():
    a = world.render("a red circle moving right", seed=3)
    assert a.shape == (8, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, world.render("a red circle moving right", seed=3))
    assert not np.array_equal(a, world.render("a red circle moving right", seed=4))
    assert world.render("a green triangle bouncing", seed=1, resolution=48, frames=12).shape == (12, 48, 48, 3)
    with pytest.raises(ValueError, match="frames must be an integer >= 4"):
        world.render("a red circle moving right", frames=2)
    with pytest.raises(ValueError, match="seed"):
        world.render("a red circle moving right", seed=-1)


def _dense_centres(clip, steps=71):
    times = np.linspace(0, world.DURATION, steps)
    return [(o, np.array([o.centre(t) for t in times])) for o in clip.objects]


def test_objects_stay_inside_the_frame_and_each_kind_does_what_it_says():
    data = world.MovingShapesDataset("train", length=300)
    for i in range(len(data)):
        clip, _ = data.clip(i)
        for o, xy in _dense_centres(clip):
            half = EXTENT[o.size] / 2
            assert (xy - half >= world.EDGE_MARGIN - 1e-9).all()
            assert (xy + half <= 1 - world.EDGE_MARGIN + 1e-9).all()
        x = {o: np.array([o.centre(t)[0] for t in world.frame_times(8)]) for o in clip.objects}
        for o, xs in x.items():
            if o.bounces:  # an interior extreme: at least one reversal inside the clip
                assert 0 < np.argmax(xs) < 7 or 0 < np.argmin(xs) < 7
        if len(clip.objects) == 2:
            a, b = clip.objects
            assert np.sign(x[a][0] - x[b][0]) != np.sign(x[a][-1] - x[b][-1])  # they cross in x
            assert abs(a.start[1] - b.start[1]) >= (EXTENT[a.size] + EXTENT[b.size]) / 2  # in different rows


def test_speeds_are_separate_and_frame_count_samples_the_same_motion():
    clip = world.clip_for("a red circle moving right quickly", seed=2)
    o = clip.objects[0]
    travel = o.centre(world.DURATION)[0] - o.centre(0)[0]
    assert travel == pytest.approx(world.SPEEDS["quickly"] * world.DURATION)
    assert world.SPEEDS["slowly"] < world.SPEEDS["normal"] < world.SPEEDS["quickly"]
    assert world.frame_times(15)[::2] == pytest.approx(world.frame_times(8))


def test_splits_are_disjoint_deterministic_and_train_never_shows_held_out_triples():
    train, val, test = (world.MovingShapesDataset(s) for s in ("train", "val", "test"))
    train_clips = {train.clip(i)[0] for i in range(400)}
    assert not any(world.has_held_out(c) for c in train_clips)
    held_val = [val.clip(i)[0] for i in range(300) if world.has_held_out(val.clip(i)[0])]
    assert held_val and any(world.has_held_out(test.clip(i)[0]) for i in range(300))
    for other in (val, test):
        assert not train_clips & {other.clip(i)[0] for i in range(200)}
    assert train.clip(7) == world.MovingShapesDataset("train").clip(7)


def test_dataset_items_and_captions():
    train = load_dataset("moving-shapes", "train", frames=6)
    item = train[0]
    assert set(item) == {"video", "caption", "prompt", "clip"} and item["video"].shape == (6, 32, 32, 3)
    assert (train.channels, train.num_classes, train.media, train.frames, len(train)) == (3, None, "video", 6, 100_000)
    assert np.array_equal(item["video"], world.render_clip(item["clip"], 32, 6))
    captions = [train.clip(i) for i in range(60)]
    assert any(caption != clip.prompt for clip, caption in captions)  # paraphrased
    val = world.MovingShapesDataset("val", length=20)
    for clip, caption in map(val.clip, range(20)):
        assert caption == clip.prompt == format_motion(parse_motion(caption))
    for prompt in world.MovingShapesDataset.preview_prompts:
        assert format_motion(parse_motion(prompt)) == prompt


def test_held_out_prompts_use_held_out_triples_and_are_judged_real():
    prompts = world.held_out_prompts(8, seed=1)
    assert prompts == world.held_out_prompts(8, seed=1) and len(prompts) == 8
    for prompt in prompts:
        p = parse_motion(prompt)
        assert (p.objects[0].colour, p.objects[0].shape, p.direction) in world.HELD_OUT
    assert judge_clip(world.render(prompts[0], seed=5), prompts[0])["ok"]


@pytest.mark.parametrize("prompt", KIND_PROMPTS)
def test_judge_accepts_real_clips_of_every_kind(prompt):
    for seed in range(2):
        verdict = judge_clip(world.render(prompt, seed), prompt)
        assert verdict["ok"], verdict["requirements"]
        assert verdict["checks"]["identity"] and verdict["checks"]["count"]


@pytest.mark.parametrize("changed, check", [
    ("a red circle moving left quickly", "direction"), ("a red circle moving down quickly", "direction"),
    ("a blue circle moving right quickly", "colour"), ("a red square moving right quickly", "shape"),
    ("a red circle moving right slowly", "speed"), ("a red circle bouncing quickly", "direction"),
    ("a red circle and a blue square passing each other quickly", "count"),
])
def test_judge_rejects_a_prompt_with_one_attribute_changed(changed, check):
    seen = observe(world.render("a red circle moving right quickly", seed=1))
    verdict = judge(seen, changed)
    assert not verdict["ok"] and not verdict["checks"][check]


def test_judge_checks_speed_between_neighbours_and_only_when_stated():
    seen = observe(world.render("a green square moving up", seed=2))  # normal speed
    assert not judge(seen, "a green square moving up slowly")["ok"]
    assert not judge(seen, "a green square moving up quickly")["ok"]
    assert judge(seen, "a green square moving up")["checks"]["speed"] is None


def test_judge_rejects_reversed_frozen_and_identity_changing_clips():
    prompt = "a purple cross moving down"
    video = world.render(prompt, seed=0)
    assert not judge_clip(video[::-1], prompt)["checks"]["direction"]
    assert not judge_clip(np.repeat(video[:1], 8, axis=0), prompt)["checks"]["direction"]
    reversed_verdict = judge_clip(video[::-1], prompt)                   # the axis diagnostic ignores the sign only
    assert axis_right(reversed_verdict, prompt) and axis_right(judge_clip(video, prompt), prompt)
    assert not axis_right(judge_clip(np.repeat(video[:1], 8, axis=0), prompt), prompt)
    sideways = world.render("a purple cross moving left", seed=0)
    assert not axis_right(judge_clip(sideways, prompt), prompt)
    assert axis_right(judge_clip(world.render(passing := "a red circle and a blue square passing each other", 0),
                                 passing), passing) is None
    blue = world.render("a blue cross moving down", seed=0)  # the same geometry, another colour
    swapped = judge_clip(np.concatenate([video[:4], blue[4:]]), prompt)
    assert not swapped["ok"] and not swapped["checks"]["identity"] and swapped["checks"]["direction"]
    passing = "a red circle and a blue square passing each other"
    assert judge_clip(world.render(passing, 0)[::-1], passing)["ok"]  # backwards, passing and bouncing still hold
    assert judge_clip(world.render("a green triangle bouncing", 0)[::-1], "a green triangle bouncing")["ok"]


def test_noise_fails_and_every_frame_form_is_accepted():
    noise = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    verdict = judge_clip(noise, "a red circle moving right")
    assert not verdict["ok"] and "not a scene" in verdict["requirements"][0]["reason"]
    assert not any(verdict["checks"][k] for k in ("count", "identity", "colour", "shape", "direction"))
    video = world.render("a yellow triangle moving left slowly", seed=4)
    tensor = torch.from_numpy(video).permute(3, 0, 1, 2).float() / 127.5 - 1  # [3, T, H, W] in [-1, 1]
    for form in (video, [Image.fromarray(f) for f in video], tensor):
        assert judge_clip(form, "a yellow triangle moving left slowly")["ok"]
    with pytest.raises(ValueError, match="uint8 array"):
        judge_clip(video.astype(np.float32), "a yellow triangle moving left slowly")
    with pytest.raises(ValueError, match="moving-shapes grammar"):
        judge_clip(video, "a yellow triangle")


def test_judge_clips_reports_rates_per_check():
    prompts = ["a red circle moving right", "a red circle moving left slowly"]
    clip = world.render(prompts[0], seed=0)
    rates = judge_clips([clip, clip], prompts)
    assert rates["n"] == 2 and rates["ok"] == 0.5
    assert rates["checks"]["colour"] == 1.0 and rates["checks"]["direction"] == 0.5
    assert rates["checks"]["speed"] == 0.0 and rates["checks"]["background"] is None
