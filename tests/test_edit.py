"""Image-to-image, inpainting and outpainting on a tiny model, with every sampler."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import difflab
from difflab.data.shapes import render
from difflab.pipelines import Pipeline, read_recipe
from difflab.samplers import SAMPLERS
from difflab.train import Trainer, preset
from difflab.testing.gaussian import GaussianMixture, NativeModel


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-edit")
    Trainer(preset("tiny").replace(max_steps=2, checkpoint_every=0, threads=1), out, log=lambda *a: None).fit()
    return Pipeline.from_pretrained(out / "model")


IMAGE = render("a red circle in the center", seed=0, resolution=16)
MASK = Image.new("L", (16, 16), 0)
MASK.paste(255, (0, 0, 8, 16))
KEEP = np.asarray(MASK) == 0


def px(image):
    return np.asarray(image)


def test_strength_zero_returns_the_input_and_one_is_text_to_image(pipe):
    assert np.array_equal(px(pipe("a blue square", image=IMAGE, strength=0.0, seed=0, steps=4).images[0]), px(IMAGE))
    full = pipe("a blue square", image=IMAGE, strength=1.0, seed=3, steps=4)
    assert np.array_equal(px(full.images[0]), px(pipe("a blue square", seed=3, steps=4).images[0]))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_in_every_mode(pipe, sampler):
    img2img = pipe("a blue square", image=IMAGE, strength=0.5, seed=2, steps=6, sampler=sampler)
    assert img2img.images[0].size == (16, 16) and img2img.recipes[0]["strength"] == 0.5
    inpainted = pipe("a blue square", image=IMAGE, mask=MASK, seed=2, steps=6, sampler=sampler, mask_blur=1.5)
    out = px(inpainted.images[0])
    assert np.array_equal(out[KEEP], px(IMAGE)[KEEP]) and not np.array_equal(out[~KEEP], px(IMAGE)[~KEEP])
    extended = pipe("a blue square", image=IMAGE, outpaint=(8, 0, 8, 0), seed=2, steps=6, sampler=sampler)
    assert extended.images[0].size == (24, 24)
    assert np.array_equal(px(extended.images[0])[8:, 8:], px(IMAGE))


@pytest.mark.parametrize("mode", [dict(strength=0.6), dict(mask=MASK), dict(outpaint=(0, 8, 0, 0))])
def test_edits_are_batch_invariant(pipe, mode):
    batch = pipe(["a blue square", "a green cross"], image=IMAGE, seed=[4, 5], steps=5, sampler="euler_ancestral", **mode)
    single = pipe("a green cross", image=IMAGE, seed=5, steps=5, sampler="euler_ancestral", **mode)
    assert np.array_equal(px(batch.images[1]), px(single.images[0]))


def test_inpainting_keeps_known_pixels_for_every_prediction_type():
    """In sample() space: the known region is exact and the hole follows the data for a flow model too."""
    schedule = difflab.NoiseSchedule.flow()
    gauss = GaussianMixture.gaussian([0.3] * 8, [1e-4] * 8)
    image = torch.linspace(-1, 1, 8).reshape(1, 1, 2, 4)
    mask = torch.zeros(1, 1, 2, 4)
    mask[..., :2] = 1
    model = NativeModel(gauss, schedule, "flow")
    flat = lambda m: lambda x, t: m(x.reshape(1, 8), t).reshape(1, 1, 2, 4)
    out = difflab.sample(flat(model), schedule, "flow", "euler", 20, shape=(1, 1, 2, 4), seeds=[0],
                         image=image, mask=mask)
    assert torch.equal(out[..., 2:], image[..., 2:])
    assert torch.allclose(out[..., :2], torch.full((1, 1, 2, 2), 0.3), atol=0.05)


@pytest.mark.parametrize("kwargs,message", [
    (dict(image=IMAGE, strength=1.5), "strength"), (dict(image=IMAGE, strength=-0.1), "strength"),
    (dict(image=IMAGE, mask=Image.new("L", (8, 8))), "mask size"), (dict(strength=0.5), "image="),
    (dict(image=Image.new("RGB", (17, 16))), "multiples of 2"), (dict(image=IMAGE, mask=MASK, outpaint=(1, 0, 0, 0)), "one edit"),
    (dict(image=IMAGE, outpaint=(0, 0, 0, 0)), "outpaint"), (dict(image="photo.png"), "PIL image"),
])
def test_bad_edits_are_refused_before_any_compute(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe("a blue square", seed=0, steps=4, **kwargs)


def test_cli_edit_and_replay(pipe, tmp_path):
    IMAGE.save(tmp_path / "in.png")
    MASK.save(tmp_path / "mask.png")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "difflab", "generate", "--model", str(pipe_folder(pipe))]
    run = subprocess.run(base + ["a blue square", "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"),
                                 "--seed", "3", "--steps", "4", "--out", str(tmp_path / "a")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    written = next((tmp_path / "a").glob("*.png"))
    recipe = read_recipe(written)
    assert recipe["mask"] and recipe["image"] and recipe["strength"] == 1.0
    missing = subprocess.run(base + ["--recipe", str(written), "--out", str(tmp_path / "b")], env=env,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "pass it again" in missing.stderr
    replay = subprocess.run(base + ["--recipe", str(written), "--image", str(tmp_path / "in.png"), "--mask",
                                    str(tmp_path / "mask.png"), "--out", str(tmp_path / "c")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert replay.returncode == 0, replay.stderr[-2000:]
    assert np.array_equal(px(Image.open(written)), px(Image.open(next((tmp_path / "c").glob("*.png")))))


def pipe_folder(pipe):
    return pipe.folder
