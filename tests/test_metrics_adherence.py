"""The adherence oracle: says yes to real renders, no to wrong prompts, and why; shapes-bench."""

import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from difflab.data import shapes
from difflab.metrics import adherence, bench
from difflab.metrics.oracle_eval import corrupt, degrade, oracle_rates


@pytest.fixture(scope="module")
def rates():
    return oracle_rates(n=300)


def test_oracle_accepts_real_renders(rates):
    assert rates["n_clean"] == 300
    assert rates["accept_clean"] >= 0.99


def test_oracle_accepts_mildly_blurred_and_noisy_renders(rates):
    assert rates["accept_degraded"] >= 0.95


@pytest.mark.parametrize("attribute", ["colour", "shape", "cell", "count", "relation", "colour_degraded"])
def test_oracle_rejects_a_changed_attribute(rates, attribute):
    assert rates[f"n_{attribute}"] >= 50
    assert rates[f"reject_{attribute}"] >= 0.95


def test_degradation_really_changes_the_image():
    image = shapes.render("a small red circle", seed=0)
    assert np.abs(np.asarray(degrade(image, 0), float) - np.asarray(image, float)).mean() > 2


def test_corrupt_changes_exactly_the_named_attribute():
    rng = random.Random(0)
    assert corrupt("two red circles", "count", rng) == "three red circles"
    assert corrupt("a red circle above a blue square", "relation", rng) == "a red circle below a blue square"
    swapped = corrupt("a red circle", "colour", rng)
    assert swapped.startswith("a") and swapped.endswith(" circle") and "red" not in swapped
    assert corrupt("a circle", "colour", rng) is None


def test_reasons_name_what_is_wrong():
    image = shapes.render("a small red circle in the top left", seed=1)
    result = adherence.check(image, "a small blue circle in the top left")
    assert not result["ok"]
    failed = [r for r in result["requirements"] if not r["ok"]]
    assert failed[0]["requirement"] == "a blue circle present" and "red circle" in failed[0]["reason"]
    result = adherence.check(image, "a large red circle at the bottom")
    assert [r["ok"] for r in result["requirements"]] == [True, False, False]
    assert "small" in result["requirements"][1]["reason"]


def test_unnamed_objects_are_ignored_but_counts_are_exact():
    image = shapes.render("a red circle and a blue square", seed=2)
    assert adherence.check(image, "a red circle")["ok"]
    assert adherence.check(image, "a blue square")["ok"]
    three = shapes.render("three green triangles", seed=0)
    assert adherence.check(three, "a green triangle")["ok"]
    assert adherence.check(three, "three green triangles")["ok"]
    assert not adherence.check(three, "two green triangles")["ok"]


def test_background_is_checked():
    image = shapes.render("a red circle on a black background", seed=0)
    assert adherence.check(image, "a red circle on a black background")["ok"]
    assert not adherence.check(image, "a red circle on a white background")["ok"]


def test_empty_and_foreign_images_are_rejected():
    blank = Image.new("RGB", (32, 32), "white")
    assert not adherence.check(blank, "a red circle")["ok"]
    assert adherence.check(blank, "a red circle")["objects"] == []
    star = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(star).polygon([(32, 10), (38, 54), (10, 24), (54, 24), (26, 54)], fill=(220, 38, 38))
    assert not adherence.check(star, "a red square")["ok"]


def test_one_object_cannot_fill_two_roles():
    image = shapes.render("a red circle", seed=0)
    assert not adherence.check(image, "a red circle and a red circle")["ok"]
    assert not adherence.check(image, "a red circle to the left of a circle")["ok"]


def test_oracle_refuses_prompts_outside_the_grammar_and_bad_images():
    image = shapes.render("a red circle")
    for prompt in ("a red star", "a photo of a cat", "five red circles"):
        with pytest.raises(ValueError, match="outside the shapes grammar"):
            adherence.check(image, prompt)
    with pytest.raises(ValueError, match="RGB"):
        adherence.check(np.zeros((32, 32), np.uint8), "a red circle")


def test_bench_has_all_categories_and_real_renders_score_full_marks():
    entries = bench.bench_prompts()
    assert 450 <= len(entries) <= 600 and entries == bench.bench_prompts()
    assert {e["category"] for e in entries} == set(bench.CATEGORIES)
    assert any(e["held_out"] for e in entries)
    sample = entries[::6]
    oks = [adherence.check(shapes.render(e["prompt"], e["seed"]), e["prompt"])["ok"] for e in sample]
    table = bench.report(sample, oks)
    assert table["overall"]["accuracy"] >= 0.99 and table["overall"]["n"] == len(sample)


def test_bench_report_counts_per_category():
    entries = [{"category": "counting", "held_out": False}, {"category": "counting", "held_out": True},
               {"category": "position", "held_out": False}]
    table = bench.report(entries, [True, False, True])
    assert table["counting"] == {"accuracy": 0.5, "n": 2}
    assert table["held_out_pairs"] == {"accuracy": 0.0, "n": 1}
    assert table["overall"]["accuracy"] == pytest.approx(0.75)
    assert "counting" in bench.format_table(table)
    with pytest.raises(ValueError, match="unknown prompt set"):
        bench.bench_prompts("geneval")


def test_custom_prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\n\ntwo blue squares\n")
    assert [e["prompt"] for e in bench.load_prompts(str(path))] == ["a red circle", "two blue squares"]
    path.write_text("a red circle\na blue dog\n")
    with pytest.raises(ValueError, match="dog"):
        bench.load_prompts(str(path))
    with pytest.raises(ValueError, match="neither"):
        bench.load_prompts(str(tmp_path / "missing.txt"))
