"""Pipeline and `difflab generate` on a tiny trained package: recipes replay exactly, seeds are
batch-invariant, bad inputs and non-finite outputs write nothing."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from difflab.pipelines import Pipeline, read_recipe
from difflab.train import Trainer, preset

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    Trainer(preset("tiny").replace(max_steps=3, checkpoint_every=0, threads=1), out, log=lambda *a: None).fit()
    return out / "model"


@pytest.fixture(scope="module")
def pipe(package):
    return Pipeline.from_pretrained(package)


def pixels(image):
    return np.asarray(image)


def test_images_have_the_package_resolution_and_recipes(pipe):
    result = pipe(["a red circle", "two blue squares"], num_images=2, seed=5, steps=3)
    assert len(result.images) == 4 and result.images[0].size == (16, 16)
    assert [r["seed"] for r in result.recipes] == [5, 6, 7, 8]
    assert result.recipes[2]["prompt"] == "two blue squares" and result.recipes[0]["sampler"] == pipe.defaults["sampler"]


def test_a_batch_equals_single_images(pipe):
    batch = pipe(["a red circle", "a green square"], seed=[3, 9], steps=4)
    single = pipe("a green square", seed=9, steps=4)
    assert np.array_equal(pixels(batch.images[1]), pixels(single.images[0]))


def test_negative_prompt_and_guidance_change_the_image(pipe):
    base = pipe("a red circle", seed=1, steps=4, guidance_scale=5.0)
    negative = pipe("a red circle", negative_prompt="a blue square", seed=1, steps=4, guidance_scale=5.0)
    assert not np.array_equal(pixels(base.images[0]), pixels(negative.images[0]))
    assert negative.recipes[0]["negative_prompt"] == "a blue square"


def test_replay_gives_identical_pixels(pipe, tmp_path):
    result = pipe("a yellow cross at the top", seed=42, steps=4, sampler="euler_ancestral")
    path = result.save(tmp_path)[0]
    again = pipe.replay(read_recipe(path))
    assert np.array_equal(pixels(result.images[0]), pixels(again.images[0]))


def test_cli_generate_then_replay_recipe(package, tmp_path):
    args = [sys.executable, "-m", "difflab", "generate"]
    first = subprocess.run(args + ["a purple triangle", "-n", "2", "--seed", "7", "--steps", "3", "--model",
                                   str(package), "--out", str(tmp_path / "a"), "--grid"],
                           env=ENV, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    written = sorted((tmp_path / "a").glob("image-*.png"))
    assert len(written) == 2 and (tmp_path / "a" / "grid.png").exists()
    replay = subprocess.run(args + ["--recipe", str(written[1]), "--model", str(package), "--out", str(tmp_path / "b")],
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert replay.returncode == 0, replay.stderr[-2000:]
    from PIL import Image
    replayed = sorted((tmp_path / "b").glob("*.png"))
    assert np.array_equal(pixels(Image.open(written[1])), pixels(Image.open(replayed[0])))


def test_bad_arguments_are_refused(pipe):
    for kwargs, message in [(dict(steps=0), "steps"), (dict(sampler="fast"), "sampler"), (dict(num_images=0), "num_images"),
                            (dict(seed=[1, 2, 3]), "seeds"), (dict(guidance_scale=float("inf")), "guidance"),
                            (dict(negative_prompt=["a", "b", "c"]), "negative_prompt")]:
        with pytest.raises(ValueError, match=message):
            pipe("a red circle", **kwargs)
    with pytest.raises(ValueError, match="prompt"):
        pipe([])


def test_a_package_carries_its_own_sampling_defaults(package, tmp_path):
    folder = tmp_path / "tuned"
    shutil.copytree(package, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "sampling": {"sampler": "euler", "guidance_scale": 1.5}}))
    tuned = Pipeline.from_pretrained(folder)
    recipe = tuned("a red circle", seed=0, steps=2).recipes[0]
    assert (recipe["sampler"], recipe["guidance_scale"], recipe["steps"]) == ("euler", 1.5, 2)
    assert tuned.defaults["steps"] == Pipeline.from_pretrained(package).defaults["steps"]
    for bad, message in [({"sampler": "fast"}, "sampler"), ({"steps": 0}, "steps"), ({"cfg": 3}, "keys among"),
                         ({"guidance_scale": "high"}, "guidance_scale"), ({"spacing": "cubic"}, "spacing")]:
        (folder / "config.json").write_text(json.dumps({**config, "sampling": bad}))
        with pytest.raises(ValueError, match=message):
            Pipeline.from_pretrained(folder)


def test_non_finite_output_is_an_error_not_a_black_image(package, tmp_path):
    pipe = Pipeline.from_pretrained(package)
    with torch.no_grad():
        next(pipe.model.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="no image"):
        pipe("a red circle", seed=0, steps=2)
