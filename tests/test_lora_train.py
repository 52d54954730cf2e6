"""LoRA training on difflab's own UNet (``train --lora-rank R --init-from PACKAGE``): only the adapter
trains; the adapter file alone, loaded onto the base package, gives the merged package's images; the
kohya export holds the same matrices; a run resumes exactly; bad settings and foreign files are refused."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import difflab
from difflab.adapters.lora_files import read_lora_file
from difflab.train import Trainer, preset
from test_train import assert_resume_is_exact

TINY = preset("tiny").replace(threads=1)
quiet = lambda *a: None


@pytest.fixture(scope="module")
def base(tiny_base):
    return tiny_base


def test_only_the_adapter_trains_and_alone_it_gives_the_merged_models_images(base, tmp_path):
    lines = []
    trainer = Trainer(TINY.replace(max_steps=6, checkpoint_every=0, init_from=str(base), lora_rank=4, lr=1e-2),
                      tmp_path / "run", log=lines.append)
    assert any("rank-4 LoRA on" in line for line in lines)
    trained = {n for n, p in trainer.unwrapped.named_parameters() if p.requires_grad}
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    assert not any("upsample" in n for n in trained)     # exact sub-pixel upsampling reads conv.weight itself
    merged = trainer.fit()
    before, after = load_file(base / "model.safetensors"), load_file(merged / "model.safetensors")
    assert before.keys() == after.keys()                 # the package is the plain architecture again
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(".weight") and (".attn." in k or ".cross." in k or ".conv" in k) for k in changed)

    adapter = tmp_path / "run" / "lora" / "adapter.safetensors"
    assert adapter.stat().st_size < (merged / "model.safetensors").stat().st_size / 5
    reference = difflab.Pipeline.from_pretrained(merged)(["a red circle", "two blue squares"], seed=1, steps=4)
    pipe = difflab.Pipeline.from_pretrained(base)
    pipe.load_lora(adapter)
    adapted = pipe(["a red circle", "two blue squares"], seed=1, steps=4)
    for a, b in zip(adapted.images, reference.images):
        assert np.abs(np.asarray(a).astype(int) - np.asarray(b)).max() <= 1               # within 1/255
    assert adapted.recipes[0]["loras"][0]["name"] == "adapter"

    ours, _ = read_lora_file(adapter)
    kohya, _ = read_lora_file(tmp_path / "run" / "lora" / "kohya.safetensors")
    by_name = {m.name.replace(".", "_"): m for m in ours}
    assert len(kohya) == len(ours) and all(k.kohya for k in kohya)
    for k in kohya:
        m = by_name[k.name]
        assert torch.equal(k.down, m.down) and torch.equal(k.up, m.up) and k.alpha == m.alpha


def test_a_lora_run_resumes_exactly(base, tmp_path):
    assert_resume_is_exact(["train", "--preset", "tiny", "--init-from", str(base), "--lora-rank", "2", "--max-steps",
                            "8", "--checkpoint-every", "2", "--threads", "1"], tmp_path)


def test_bad_lora_settings_and_foreign_files_are_refused(base, tmp_path):
    with pytest.raises(ValueError, match="lora_rank must be an integer in \\[0, 256\\], above 0 only with init_from"):
        TINY.replace(lora_rank=4)
    with pytest.raises(ValueError, match="lora_rank"):
        TINY.replace(lora_rank=-1, init_from=str(base))
    wide = {**TINY.model, "channels": (16, 48)}
    wider = Trainer(TINY.replace(model=wide, max_steps=1, checkpoint_every=0), tmp_path / "wide", log=quiet).fit()
    Trainer(TINY.replace(model=wide, max_steps=1, checkpoint_every=0, init_from=str(wider), lora_rank=2),
            tmp_path / "wl", log=quiet).fit()
    pipe = difflab.Pipeline.from_pretrained(base)
    with pytest.raises(ValueError, match="does not fit"):
        pipe.load_lora(tmp_path / "wl" / "lora" / "adapter.safetensors")
    assert pipe.loras == []                              # refused: the network is left as it was


def test_a_lora_on_a_folder_adapts_the_packages_own_network(base, tmp_path):
    """--lora-rank with --init-from takes the package's network, schedule and resolution over the
    dataset's defaults, so a handful of captioned images (kohya's folder) trains a LoRA of it."""
    import json

    from PIL import Image

    from difflab.cli import app
    from difflab.train import build_config
    from typer.testing import CliRunner

    folder = tmp_path / "images"
    folder.mkdir()
    for i, caption in enumerate(["a cyan circle", "two cyan squares", "a cyan cross above a red circle"]):
        Image.new("RGB", (40, 40), (20, 190, 200)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(caption)
    package = json.loads((base / "config.json").read_text())
    config = build_config("shapes", None, {"init_from": str(base), "lora_rank": 2, "dataset": "folder",
                                           "data_dir": str(folder)})
    assert config.model["channels"] == tuple(package["config"]["channels"]) and config.resolution == TINY.resolution
    assert build_config(None, None, {"init_from": str(base), "lora_rank": 2, "resolution": 24}).resolution == 24
    result = CliRunner().invoke(app, ["train", "--init-from", str(base), "--lora-rank", "2", "--dataset", "folder",
                                      "--data-dir", str(folder), "--max-steps", "2", "--batch-size", "2",
                                      "--threads", "1", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    pipe = difflab.Pipeline.from_pretrained(base)
    pipe.load_lora(tmp_path / "run" / "lora" / "adapter.safetensors")
    assert pipe.loras and pipe.vocabulary_warnings(["a cyan circle"]) == []


def test_lora_layers_choose_what_the_adapter_reaches(base):
    from difflab.adapters.lora_train import add_lora, lora_targets
    from difflab.models.package import load_package
    unet = load_package(base).model
    every, attention, cross = (lora_targets(unet, layers) for layers in ("all", "attention", "cross"))
    assert set(cross) < set(attention) < set(every)
    assert cross and all(".cross." in n for n in cross) and not any(n.endswith(("conv1", "conv2")) for n in attention)
    assert add_lora(unet, 2, layers="cross") == cross
    trained = {n.rsplit(".lora_", 1)[0] for n, p in unet.named_parameters() if p.requires_grad}
    assert trained == set(cross)
    with pytest.raises(ValueError, match="lora_layers must be one of"):
        TINY.replace(init_from=str(base), lora_rank=2, lora_layers="everything")
