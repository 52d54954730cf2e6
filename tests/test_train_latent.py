"""Latent diffusion's two training stages (issue 13): the VAE (``task="vae"``) learns and exports its
latent normalisation; a denoiser trains on those latents (UNet and MMDiT), resumes exactly after
SIGKILL, and exports a package whose VAE rides along in ``vae/``; MMDiT's adaLN-Zero start."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from difflab.models import load
from difflab.models.mmdit import MMDiT
from difflab.models.vae import AutoencoderKL
from difflab.pipelines import Pipeline
from difflab.train import Trainer, TrainConfig, preset, train
from test_train import held_out_loss, killed_then_resumed  # pytest puts tests/ on sys.path (prepend mode)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TINY_VAE = dict(class_name="AutoencoderKL", channels=(8, 16), norm_groups=4, latent_channels=4, mid_attention=False)
VAE_RUN = TrainConfig(task="vae", resolution=16, model=TINY_VAE, batch_size=8, max_steps=12, checkpoint_every=0,
                      lr=2e-3, lr_warmup=2, ema_decay=0.5, threads=1, log_every=4)
QUIET = dict(log=lambda *a: None)


@pytest.fixture(scope="module")
def vae_package(tmp_path_factory):
    return train(VAE_RUN, tmp_path_factory.mktemp("vae"), **QUIET)


def test_vae_loss_falls(tmp_path):
    trainer = Trainer(VAE_RUN.replace(max_steps=40), tmp_path, **QUIET)
    positions = list(range(10**6, 10**6 + 32))  # never trained on
    before = held_out_loss(trainer, positions)
    for _ in range(40):
        trainer.train_step()
    assert held_out_loss(trainer, positions) < 0.7 * before


def test_vae_export_normalises_its_latents(vae_package):
    vae = AutoencoderKL.from_pretrained(vae_package)
    assert vae.config.scaling_factor != 1.0 and vae.config.shift_factor != 0.0
    header = json.loads((vae_package / "config.json").read_text())
    assert header["training"]["task"] == "vae" and "diffusion" not in header
    trainer_data = Trainer(VAE_RUN, vae_package.parent / "again", **QUIET).data
    images, _ = trainer_data.batch(list(range(256)))
    with torch.no_grad():
        z = vae.normalize(vae.encode(images).mode())
    assert abs(z.mean().item()) < 0.1 and abs(z.std().item() - 1) < 0.1   # measured on items 0..255 of the same 1024


def test_decoder_only_fine_tuning_keeps_the_encoder_and_the_latents(tmp_path, vae_package):
    config = VAE_RUN.replace(decoder_only=True, init_from=str(vae_package), max_steps=6)
    package = train(config, tmp_path, **QUIET)
    before, after = load_file(vae_package / "model.safetensors"), load_file(package / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    old, new = AutoencoderKL.from_pretrained(vae_package), AutoencoderKL.from_pretrained(package)
    assert (old.config.scaling_factor, old.config.shift_factor) == (new.config.scaling_factor, new.config.shift_factor)
    with pytest.raises(ValueError, match="decoder_only"):
        VAE_RUN.replace(decoder_only=True)                   # nothing to keep fixed without init_from


def test_task_vae_refuses_a_denoiser_table_and_a_vae_input():
    with pytest.raises(ValueError, match="AutoencoderKL for task=vae"):
        TrainConfig(task="vae", model=dict(class_name="UNet", channels=(8,)))
    with pytest.raises(ValueError, match="None for task=vae"):
        TrainConfig(task="vae", vae="somewhere")
    with pytest.raises(ValueError, match="task must be one of"):
        TrainConfig(task="gan")
    assert TrainConfig(task="vae").model["class_name"] == "AutoencoderKL"   # the VAE's default table


def test_latent_training_refuses_a_vae_that_does_not_fit(tmp_path, vae_package):
    with pytest.raises(ValueError, match="no VAE package"):
        Trainer(preset("tiny").replace(vae=str(tmp_path / "none")), tmp_path / "a", **QUIET)
    with pytest.raises(ValueError, match="encodes 3-channel images, the dataset has 1"):
        Trainer(preset("digits").replace(vae=str(vae_package)), tmp_path / "b", **QUIET)


@pytest.mark.parametrize("model", [
    dict(class_name="UNet", channels=(16, 32), layers_per_block=1, attention_levels=(1,), head_dim=16, norm_groups=8),
    dict(class_name="MMDiT", patch_size=2, hidden_size=32, depth=2, num_heads=2, sample_size=8, pos_embed_max_size=8,
         qk_norm="rms_norm"),
])
def test_latent_denoiser_learns_and_exports_a_latent_package(tmp_path, vae_package, model):
    config = preset("tiny").replace(vae=str(vae_package), resolution=16, model=model, max_steps=30, lr=2e-3,
                                    checkpoint_every=0)
    trainer = Trainer(config, tmp_path, **QUIET)
    x0, _ = trainer.latents.batch([0, 1], "cpu")
    assert x0.shape == (2, 4, 8, 8)                                   # the VAE's latents, not pixels
    positions = list(range(10**6, 10**6 + 32))
    before = held_out_loss(trainer, positions)
    for _ in range(30):
        trainer.train_step()
    assert held_out_loss(trainer, positions) < before
    package = trainer.export()
    header = json.loads((package / "config.json").read_text())
    assert header["codec"] == {"type": "vae", "path": "vae"} and header["data"]["resolution"] == 16
    vae_weights, shipped = load_file(vae_package / "model.safetensors"), load_file(package / "vae" / "model.safetensors")
    assert all(torch.equal(vae_weights[k], shipped[k]) for k in vae_weights)
    pipe = Pipeline.from_pretrained(package)
    assert pipe.vae is not None and pipe("a red circle", seed=0, steps=2).images[0].size == (16, 16)


def test_latent_run_resumes_exactly_after_sigkill(tmp_path, vae_package):
    args = ["train", "--preset", "tiny", "--vae", str(vae_package), "--resolution", "16", "--max-steps", "12",
            "--checkpoint-every", "4", "--threads", "1"]
    full = subprocess.run([sys.executable, "-m", "difflab", *args, "--out", str(tmp_path / "full")], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]
    killed_then_resumed(args, tmp_path / "killed")
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_max_minutes_stops_and_exports(tmp_path):
    trainer = Trainer(preset("tiny").replace(max_steps=10**6, max_minutes=0.001), tmp_path, **QUIET)
    package = trainer.fit()
    assert (package / "model.safetensors").is_file() and 1 <= trainer.step < 10**6
    assert (tmp_path / "log.csv").read_text().strip().splitlines()[-1].startswith(f"{trainer.step},")


def test_mmdit_starts_as_identity_blocks_and_round_trips_strictly(tmp_path):
    torch.manual_seed(0)
    model = MMDiT(in_channels=4, patch_size=2, hidden_size=32, depth=2, num_heads=2, context_dim=24, pooled_dim=24,
                  sample_size=8, pos_embed_max_size=8, qk_norm="rms_norm").eval()
    x, context, pooled = torch.randn(3, 4, 8, 8), torch.randn(3, 5, 24), torch.randn(3, 24)
    hooks, seen = [], {}
    for i, block in enumerate(model.blocks):
        hooks.append(block.register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(i, (args[0], out))))
    with torch.no_grad():
        out = model(x, torch.tensor([10.0, 500.0, 990.0]), context, pooled)
    assert out.shape == (3, 4, 8, 8) and torch.equal(out, torch.zeros_like(out))   # zero output layer
    for i, (image_in, result) in seen.items():
        image_out = result[0] if isinstance(result, tuple) else result
        assert torch.equal(image_in, image_out), f"block {i} is not the identity on the image stream at init"
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    model.save_pretrained(tmp_path / "m")
    again = load(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor(3.0), context, pooled), again(x, torch.tensor(3.0), context, pooled))
    state = load_file(tmp_path / "m" / "model.safetensors")
    state["blocks.0.extra"] = torch.zeros(1)
    from safetensors.torch import save_file
    save_file(state, tmp_path / "m" / "model.safetensors")
    with pytest.raises(ValueError, match="blocks.0.extra"):
        load(tmp_path / "m")


def test_lcm_and_reflow_students_of_a_latent_teacher_keep_its_vae(tmp_path, vae_package):
    from difflab.train.distill import distill_config
    model = dict(class_name="UNet", channels=(16, 32), layers_per_block=1, attention_levels=(1,), head_dim=16,
                 norm_groups=8)
    teacher = train(preset("tiny").replace(vae=str(vae_package), resolution=16, model=model, max_steps=2,
                                           checkpoint_every=0), tmp_path / "teacher", **QUIET)
    student = train(distill_config("lcm", str(teacher), dict(max_steps=2, batch_size=4, threads=1)),
                    tmp_path / "student", **QUIET)
    assert json.loads((student / "config.json").read_text())["codec"] == {"type": "vae", "path": "vae"}
    pipe = Pipeline.from_pretrained(student)
    assert pipe.vae is not None and pipe.defaults["sampler"] == "lcm"
    assert pipe("a red circle", seed=0).images[0].size == (16, 16)

    # reflow from the same latent teacher: its couplings are latents (noise in the latent's shape, the
    # teacher's ODE solution undecoded), and the student decodes through the same VAE
    flows = distill_config("reflow", str(teacher), dict(max_steps=2, batch_size=4, threads=1, couplings=4,
                                                      teacher_steps=2))
    trainer = Trainer(flows, tmp_path / "reflow", **QUIET)
    z, x1, caption = trainer.coupled.couplings.pair(2)
    latent = AutoencoderKL.from_pretrained(vae_package).config
    assert z.shape == x1.shape == (latent.latent_channels, 16 // latent.downscale, 16 // latent.downscale)
    solve = trainer.teacher.solver(trainer.conditioner, flows.teacher_guidance, 2, "cpu")
    assert torch.allclose(solve(z[None], [caption])[0], x1, atol=1e-5)   # the teacher's latent, replayed
    student = Pipeline.from_pretrained(trainer.fit())
    assert student.vae is not None and student.defaults["sampler"] == "euler"
    assert student("a red circle", seed=0).images[0].size == (16, 16)
