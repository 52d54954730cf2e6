"""Pipeline.save_pretrained writes a package that from_pretrained reads back to the same images:
pixel models, and latent models whose VAE travels in vae/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import difflab
from difflab.codecs import VAECodec
from difflab.models.text import ClassLabelEncoder
from difflab.models.unet import UNet
from difflab.models.vae import AutoencoderKL


def same_images(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.images, b.images))


def test_the_bundled_model_saved_and_reloaded_makes_the_same_images(tmp_path):
    pipe = difflab.Pipeline.from_pretrained()
    saved = pipe.save_pretrained(tmp_path / "copy")
    again = difflab.Pipeline.from_pretrained(saved)
    assert again.defaults == pipe.defaults and again.weights == pipe.weights
    assert same_images(pipe("a red circle", seed=2, steps=4), again("a red circle", seed=2, steps=4))
    with pytest.raises(FileExistsError, match="exists"):
        pipe.save_pretrained(saved)


def test_a_latent_package_keeps_its_vae(tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKL(channels=(16, 32), latent_channels=4, norm_groups=8, scaling_factor=0.7).eval()
    model = UNet(in_channels=4, out_channels=4, channels=(16, 32), attention_levels=(), norm_groups=8,
                 num_classes=3).eval()
    pipe = difflab.Pipeline(model, difflab.NoiseSchedule.scaled_linear(), "epsilon", ClassLabelEncoder(["a", "b", "c"]),
                            VAECodec(vae), resolution=16, name="latent")
    saved = pipe.save_pretrained(tmp_path / "latent")
    assert json.loads((saved / "config.json").read_text())["codec"] == {"type": "vae", "path": "vae"}
    again = difflab.Pipeline.from_pretrained(saved)
    assert again.vae is not None and again.vae.config.scaling_factor == 0.7
    assert same_images(pipe(1, seed=0, steps=3), again(1, seed=0, steps=3))


def test_a_diffusers_loaded_pipeline_says_how_to_keep_it(tmp_path):
    from test_convert_sd_pipeline import tiny_sd_folder
    folder, _ = tiny_sd_folder(tmp_path)
    with pytest.raises(ValueError, match="saved by keeping that folder"):
        difflab.Pipeline.from_pretrained(folder).save_pretrained(tmp_path / "copy")


def test_bundled_models_load_by_name_and_a_real_path_wins(tmp_path, monkeypatch):
    from difflab.pipelines import BUNDLED_MODEL, Pipeline
    from difflab.settings import BUNDLED_MODELS, package_folder
    from difflab.settings import DEFAULT_MODEL
    assert package_folder("shapes") == package_folder("shapes-v1.1") == BUNDLED_MODELS["shapes"]   # the 32x32 v1.1
    assert DEFAULT_MODEL == "shapes-v2.1" and BUNDLED_MODEL == package_folder(DEFAULT_MODEL) != package_folder("shapes")
    assert package_folder("shapes-v1") == BUNDLED_MODEL.parent / "shapes-v1"   # the first default, kept by name
    pipe = Pipeline.from_pretrained("shapes-v1")
    assert Path(pipe.folder) == BUNDLED_MODELS["shapes-v1"] and pipe.weights != Pipeline.from_pretrained().weights
    with pytest.raises(ValueError, match="prediction_type= is for single-file checkpoints"):
        Pipeline.from_pretrained("shapes-v1", prediction_type="epsilon")   # a package says it itself
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shapes-v1").mkdir()                      # a local folder of that name is that folder
    with pytest.raises(ValueError, match="is not a difflab model package"):
        package_folder("shapes-v1")


def test_a_recipe_of_an_earlier_default_replays_on_that_model(tmp_path):
    """A PNG made with shapes-v1 (the default until v1.1) replays on shapes-v1 from the command line with no
    --model; the library's replay on another model names the bundled model that fits."""
    import os
    import subprocess
    import sys

    from PIL import Image

    from difflab.pipelines import Pipeline, read_recipe
    made = Pipeline.from_pretrained("shapes-v1")("a red circle", seed=3, steps=2)
    path = made.save(tmp_path / "a")[0]
    run = subprocess.run([sys.executable, "-m", "difflab", "generate", "--recipe", str(path), "--out", str(tmp_path / "b")],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    again = sorted((tmp_path / "b").glob("*.png"))
    assert read_recipe(again[0])["weights"] == made.recipes[0]["weights"]
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(again[0])))
    with pytest.raises(ValueError, match="they are the bundled model 'shapes-v1'"):
        Pipeline.from_pretrained().replay(read_recipe(path))


def test_an_adapter_named_without_a_model_brings_the_base_it_records(tmp_path):
    """No model named: a bundled ControlNet or IP-Adapter runs on the model it was trained for, as does a
    difflab LoRA file (its ``base`` header); a base that is not here, or a file with none, leaves the default."""
    import torch
    from safetensors.torch import save_file

    from difflab.pipelines import BUNDLED_MODEL, Pipeline
    from difflab.pipelines.recipes import adapters_base
    from difflab.settings import BUNDLED_MODELS
    pipe = Pipeline.from_pretrained(controlnet="shapes-layout")
    assert Path(pipe.folder) == BUNDLED_MODELS["shapes-v1"] != BUNDLED_MODEL and len(pipe.controlnets) == 1
    assert adapters_base(ip_adapter="shapes-ip") == "shapes-v1"
    tensor = {"unet.mid_attn.to_q.lora_A.weight": torch.zeros(4, 8)}
    for name, header, base in (("ours", {"base": "shapes"}, "shapes"), ("gone", {"base": str(tmp_path / "x")}, None),
                               ("kohya", {}, None)):
        save_file(tensor, tmp_path / f"{name}.safetensors", metadata=header)
        assert adapters_base(loras=[tmp_path / f"{name}.safetensors"]) == base, name
    save_file(tensor, tmp_path / "broken.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\xff" * 20)      # unreadable: its loader will say why
    assert adapters_base(None, None, [tmp_path / "broken.safetensors", tmp_path / "ours.safetensors"]) == "shapes"
