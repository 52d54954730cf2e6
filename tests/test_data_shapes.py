"""The shapes world: grammar, rendering, determinism, splits, held-out pairs, captions."""

import hashlib

import numpy as np
import pytest

from difflab.data import shapes
from difflab.data.procedural import SPLITS
from difflab.data.shapes_grammar import (BACKGROUNDS, COLOURS, POSITIONS, RELATIONS, SHAPES, ObjectSpec, Prompt,
                                         format_prompt, parse_prompt)
from difflab.metrics.adherence import check


def _digest(image) -> str:
    return hashlib.sha1(np.asarray(image).tobytes()).hexdigest()


@pytest.mark.parametrize("prompt", [
    "a red circle", "a small red circle in the top left", "two blue squares", "three small green crosses",
    "a red circle and a blue square", "a red circle to the left of a blue square",
    "a yellow triangle above a purple cross on a black background", "an orange square on a gray background",
    "a large circle at the bottom", "a cross below a circle",
])
def test_parse_format_round_trip(prompt):
    assert format_prompt(parse_prompt(prompt)) == prompt


def test_parse_reads_every_attribute():
    p = parse_prompt("A small red circle in the top left on a grey background.")
    assert p == Prompt("single", (ObjectSpec("circle", "red", "small", (0, 0)),), background="gray")
    assert parse_prompt("three blue crosses").count == 3
    assert parse_prompt("a red circle below a green square").relation == "below"


@pytest.mark.parametrize("prompt, word", [
    ("a pink circle", "pink"), ("a red hexagon", "hexagon"), ("four red circles", "four"),
    ("red circle", "must start"), ("", "empty"), ("a red circle on a purple background", "purple"),
    ("a red circle and a blue square and a green cross", "at most two"), ("a red small circle", "small"),
])
def test_prompts_outside_the_grammar_are_refused_with_the_reason(prompt, word):
    with pytest.raises(ValueError, match="outside the shapes grammar") as error:
        parse_prompt(prompt)
    assert word in str(error.value)
    assert "shapes circle, square, triangle, cross" in str(error.value)


@pytest.mark.parametrize("resolution", [32, 48, 64])
def test_render_is_deterministic_and_has_the_requested_size(resolution):
    a = shapes.render("a red circle to the left of a blue square", seed=3, resolution=resolution)
    b = shapes.render("a red circle to the left of a blue square", seed=3, resolution=resolution)
    c = shapes.render("a red circle to the left of a blue square", seed=4, resolution=resolution)
    assert a.size == (resolution, resolution) and a.mode == "RGB"
    assert _digest(a) == _digest(b) != _digest(c)


def test_render_is_anti_aliased():
    pixels = np.asarray(shapes.render("a large red circle on a white background", seed=0)).reshape(-1, 3)
    distinct = {tuple(p) for p in pixels}
    assert len(distinct) > 5  # background, fill and intermediate edge shades


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("colour", list(COLOURS))
def test_every_colour_shape_pair_renders_and_is_recognised(shape, colour):
    for seed, background in enumerate(BACKGROUNDS):
        prompt = f"a small {colour} {shape} on a {background} background"
        assert check(shapes.render(prompt, seed), prompt)["ok"], prompt


def test_render_satisfies_positions_counts_and_relations():
    prompts = [f"a large blue cross {where}" for where in POSITIONS]
    prompts += [f"three green {s}" for s in ("circles", "squares", "triangles", "crosses")]
    prompts += [f"a red circle {rel} a blue square" for rel in RELATIONS]
    for seed, prompt in enumerate(prompts):
        assert check(shapes.render(prompt, seed), prompt)["ok"], prompt


def test_render_refuses_impossible_scenes_and_bad_arguments():
    with pytest.raises(ValueError, match="same cell"):
        shapes.render("a red circle in the center and a blue square in the center")
    with pytest.raises(ValueError, match="seed"):
        shapes.render("a red circle", seed=-1)
    with pytest.raises(ValueError, match="resolution"):
        shapes.render("a red circle", resolution=8)
    with pytest.raises(ValueError, match=r"and_order must be one of \('any', 'reading'\), got 'sideways'"):
        shapes.scene_for("a red circle and a blue square", 1, and_order="sideways")
    placed = shapes.scene_for("a red circle and a blue square", 1, and_order="reading").objects
    assert placed[0].cell < placed[1].cell


def test_dataset_items_are_deterministic_and_well_formed():
    a, b = shapes.ShapesDataset("train"), shapes.ShapesDataset("train")
    for i in range(20):
        x, y = a[i], b[i]
        assert set(x) == {"image", "caption", "prompt", "scene"}
        assert x["caption"] == y["caption"] and _digest(x["image"]) == _digest(y["image"])
        assert x["image"].size == (32, 32) and 1 <= len(x["scene"].objects) <= 3
    assert len(a) == 100_000 and len(shapes.ShapesDataset("val", length=7)) == 7


def test_dataset_rejects_bad_arguments():
    with pytest.raises(ValueError, match="split must be one of train, val, test"):
        shapes.ShapesDataset("validation")
    with pytest.raises(IndexError):
        shapes.ShapesDataset("test", length=5)[5]


def test_splits_are_disjoint():
    digests = {split: {_digest(shapes.ShapesDataset(split, length=300)[i]["image"]) for i in range(300)}
               for split in SPLITS}
    assert not digests["train"] & digests["val"]
    assert not digests["train"] & digests["test"]
    assert not digests["val"] & digests["test"]


def test_held_out_pairs_never_appear_in_train_but_do_in_test():
    train = shapes.ShapesDataset("train")
    test = shapes.ShapesDataset("test")
    assert not any(shapes.has_held_out(train.scene(i)[0]) for i in range(2000))
    assert sum(shapes.has_held_out(test.scene(i)[0]) for i in range(1000)) > 50


def test_val_and_test_captions_are_canonical_and_obeyed():
    data = shapes.ShapesDataset("val", length=100)
    for i in range(100):
        item = data[i]
        assert item["caption"] == item["prompt"] == format_prompt(parse_prompt(item["caption"]))
        assert check(item["image"], item["caption"])["ok"], item["caption"]


def test_train_captions_are_diverse_and_images_obey_their_prompt():
    data = shapes.ShapesDataset("train")
    captions = [data.scene(i)[1] for i in range(600)]
    prompts = [data.scene(i)[0].prompt for i in range(600)]
    paraphrased = sum(c != p for c, p in zip(captions, prompts))
    assert 0.4 < paraphrased / 600 < 0.9
    for marker in ("picture of", "left of", "pair of", "that is", "under", "against"):
        assert any(marker in c for c in captions), marker
    for i in range(60):
        assert check(data[i]["image"], data[i]["prompt"])["ok"]


def test_the_default_draw_is_what_it_always_was():
    """The curriculum options default to the old draw: the first 300 train scenes and captions, pinned."""
    data = shapes.ShapesDataset("train")
    assert hashlib.md5(repr([data.scene(i) for i in range(300)]).encode()).hexdigest() == \
        "3b4c19b8d3fa56acc2b5333de95c98e7"


@pytest.mark.parametrize("relation", RELATIONS)
def test_a_curriculum_draws_one_relation_with_canonical_captions(relation):
    data = shapes.ShapesDataset("train", forms={"relation": 1}, relations=(relation,), captions="canonical")
    axis, sign = {"to the left of": (1, -1), "to the right of": (1, 1), "above": (0, -1), "below": (0, 1)}[relation]
    for i in range(40):
        scene, caption = data.scene(i)
        assert caption == scene.prompt and parse_prompt(caption).relation == relation
        first, second = scene.objects                  # the first-named object is the one the relation places
        assert sign * (first.cell[axis] - second.cell[axis]) > 0
        assert not shapes.has_held_out(scene)
    assert check(data[0]["image"], data[0]["caption"])["ok"]


@pytest.mark.parametrize("captions", ["canonical", "paraphrase"])
def test_reading_order_puts_the_first_named_object_first(captions):
    """and_order="reading": an unplaced pair lies in the caption's order (an earlier row, or the same row
    further left); the draw is otherwise the one the default makes."""
    forms = {"and": 1}
    data = shapes.ShapesDataset("train", forms=forms, captions=captions, and_order="reading")
    free = shapes.ShapesDataset("train", forms=forms, captions=captions)
    unplaced = 0
    for i in range(200):
        (scene, caption), (other, _) = data.scene(i), free.scene(i)
        assert scene.prompt == other.prompt and scene.background == other.background
        assert sorted(o.cell for o in scene.objects) == sorted(o.cell for o in other.objects)
        first, second = scene.objects
        if not any(spec.cell for spec in parse_prompt(scene.prompt).objects):
            unplaced += 1
            assert first.cell < second.cell                          # (row, column): reading order
            if first.shape != second.shape:                          # the caption names them in that order
                assert caption.index(first.shape) < caption.index(second.shape), caption
        else:
            assert [o.cell for o in scene.objects] == [o.cell for o in other.objects]
    assert unplaced > 30
    either_way = sum(a.cell > b.cell for a, b in (free.scene(i)[0].objects for i in range(200)))
    assert either_way > 40                                           # the default lays a pair out either way
    assert check(data[0]["image"], data[0]["prompt"])["ok"]


def test_a_curriculum_mixes_forms_by_weight():
    data = shapes.ShapesDataset("train", forms={"relation": 3, "count": 1, "single": 0})
    kinds = [parse_prompt(data.scene(i)[0].prompt).kind for i in range(400)]
    assert set(kinds) == {"relation", "count"} and 0.65 < kinds.count("relation") / 400 < 0.85
    captions = [data.scene(i)[1] for i in range(400)]                  # paraphrases stay the default
    assert sum(c != data.scene(i)[0].prompt for i, c in enumerate(captions)) > 150


def test_the_benchmark_forms_draw_unplaced_pairs_and_bare_singles():
    """forms "pair" and "bare" (never drawn by default): shapes-bench's two-object and single-object forms."""
    data = shapes.ShapesDataset("train", forms={"pair": 1, "bare": 1}, and_order="reading")
    prompts = [parse_prompt(data.scene(i)[0].prompt) for i in range(300)]
    pairs = [p for p in prompts if p.kind == "and"]
    bare = [p for p in prompts if p.kind == "single"]
    assert len(pairs) + len(bare) == 300 and 100 < len(pairs) < 200
    for p in pairs:
        assert all(o.colour and o.cell is None for o in p.objects)
        assert (p.objects[0].shape, p.objects[0].colour) != (p.objects[1].shape, p.objects[1].colour)
    assert all(p.objects[0].colour is None and p.objects[0].cell is None for p in bare)
    assert {p.objects[0].size for p in bare} == {None, "small", "large"}
    for i in range(300):
        scene = data.scene(i)[0]
        if len(scene.objects) == 2:
            assert scene.objects[0].cell < scene.objects[1].cell     # laid out as and_order says
            assert not shapes.has_held_out(scene)
    image, caption = data[0]["image"], data[0]["prompt"]
    assert check(image, caption)["ok"]
    assert shapes.ShapesDataset("train", forms={"single": 1}).scene(7) == shapes.ShapesDataset(
        "train", forms={"single": 1, "pair": 0}).scene(7)                # a zero weight draws as before


@pytest.mark.parametrize("options, message", [
    (dict(forms={"relations": 1}), "forms must map some of single, and, count, relation, pair, bare"),
    (dict(forms={"relation": -1}), "forms must map"), (dict(forms={}), "forms must map"),
    (dict(forms={"single": 0}), "positive sum"), (dict(forms={"single": True}), "forms must map"),
    (dict(relations=("on top of",)), "relations must be some of"), (dict(relations=()), "relations must be"),
    (dict(captions="plain"), "captions must be one of paraphrase, canonical"),
    (dict(and_order="random"), "and_order must be one of any, reading")])
def test_a_bad_curriculum_is_refused_in_one_line(options, message):
    with pytest.raises(ValueError, match=message):
        shapes.ShapesDataset("train", **options)


def test_the_training_config_takes_a_data_table(tmp_path):
    from difflab.train.config import TrainConfig, build_config, build_dataset
    from difflab.train.flags import parse_field_flags

    toml = tmp_path / "phase.toml"
    toml.write_text('[data]\nforms = {relation = 1}\nrelations = ["below"]\ncaptions = "canonical"\n')
    config = build_config("tiny", str(toml), {})
    assert config.data == {"forms": {"relation": 1}, "relations": ("below",), "captions": "canonical"}
    data = build_dataset(config)
    assert all(data.scene(i)[1].split(" below ")[0] == data.scene(i)[0].prompt.split(" below ")[0] for i in range(10))
    toml.write_text('[data]\nrelation = ["below"]\n')
    with pytest.raises(ValueError, match="keys among"):
        build_config("tiny", str(toml), {})
    toml.write_text('dataset = "digits"\n[data]\ncaptions = "canonical"\n')
    with pytest.raises(ValueError, match=r"dataset=shapes"):
        build_config("tiny", str(toml), {})
    toml.write_text('data = "canonical"\n')
    with pytest.raises(ValueError, match=r"a \[data\] table"):
        build_config("tiny", str(toml), {})
    with pytest.raises(ValueError, match="a table of shapes dataset options"):
        TrainConfig(data="canonical")
    with pytest.raises(ValueError, match="unknown option '--data'"):
        parse_field_flags(["--data", "x"])


@pytest.mark.parametrize("phase", [1, 2, 3])
def test_the_relation_curriculum_configs_build(phase):
    """benchmarks/configs/relation_phase*.toml (BENCHMARKS.md's recipe) stay valid training configs."""
    from pathlib import Path

    from difflab.train.config import build_config, build_dataset

    path = Path(__file__).parents[1] / "benchmarks" / "configs" / f"relation_phase{phase}.toml"
    config = build_config("shapes", str(path), {"init_from": None})
    kinds = {parse_prompt(build_dataset(config).scene(i)[0].prompt).kind for i in range(50)}
    assert kinds == ({"relation"} if phase < 3 else {"single", "and", "count", "relation"})


@pytest.mark.parametrize("name", ["binding_mixed", "binding_mixed_2"])
def test_the_binding_mixed_configs_build(name):
    """benchmarks/configs/binding_mixed*.toml (shapes-v2.1's recipe): the mixture plus the benchmark's forms."""
    from pathlib import Path

    from difflab.train.config import build_config, build_dataset

    path = Path(__file__).parents[1] / "benchmarks" / "configs" / f"{name}.toml"
    data = build_dataset(build_config("shapes", str(path), {"init_from": None}))
    prompts = [parse_prompt(data.scene(i)[0].prompt) for i in range(400)]
    unplaced = [p for p in prompts if p.kind == "and" and not any(o.cell for o in p.objects)]
    bare = [p for p in prompts if p.kind == "single" and not p.objects[0].colour and not p.objects[0].cell]
    assert 0.25 < len(unplaced) / 400 < 0.5 and 0.05 < len(bare) / 400 < 0.2
    assert all(s.objects[0].cell < s.objects[1].cell for s in (data.scene(i)[0] for i in range(400))
               if parse_prompt(s.prompt).kind == "and" and not any(o.cell for o in parse_prompt(s.prompt).objects))


def test_the_binding_phase2_config_builds():
    """benchmarks/configs/binding_phase2.toml: the dataset's own mixture, unplaced pairs in reading order."""
    from pathlib import Path

    from difflab.train.config import build_config, build_dataset

    path = Path(__file__).parents[1] / "benchmarks" / "configs" / "binding_phase2.toml"
    data = build_dataset(build_config("shapes", str(path), {"init_from": None}))
    scenes = [data.scene(i)[0] for i in range(300)]
    assert {parse_prompt(s.prompt).kind for s in scenes} == {"single", "and", "count", "relation"}
    pairs = [s for s in scenes if parse_prompt(s.prompt).kind == "and"
             and not any(o.cell for o in parse_prompt(s.prompt).objects)]
    assert pairs and all(s.objects[0].cell < s.objects[1].cell for s in pairs)
