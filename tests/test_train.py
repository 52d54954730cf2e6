"""The trainer on the tiny preset: learning, exact resume after SIGKILL, atomic checkpoints,
non-finite losses, two processes, and the CLI's handling of bad arguments."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from difflab.train import Trainer, TrainingStopped, preset
from difflab.train import checkpoint as ckpt
from difflab.train import trainer as trainer_module
from difflab.train.objectives import denoising as denoising_module

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TINY = preset("tiny").replace(threads=1)


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "difflab", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def held_out_loss(trainer, positions):
    generator_state = torch.get_rng_state()
    with torch.no_grad():
        loss = trainer.micro_loss(positions).item()
    torch.set_rng_state(generator_state)
    return loss


def test_loss_goes_down(tmp_path):
    trainer = Trainer(TINY.replace(max_steps=60, checkpoint_every=0, lr=2e-3), tmp_path, log=lambda *a: None)
    positions = list(range(10**6, 10**6 + 64))  # a fixed batch the run never trains on
    before = held_out_loss(trainer, positions)
    for _ in range(60):
        trainer.train_step()
    assert held_out_loss(trainer, positions) < 0.8 * before


def weights(out: Path) -> dict:
    return load_file(out / "model" / "model.safetensors")


def killed_then_resumed(args: list[str], out: Path) -> subprocess.CompletedProcess:
    """``difflab ARGS --out OUT`` SIGKILLed once its first checkpoint exists, then run with --resume."""
    killed = subprocess.Popen([sys.executable, "-m", "difflab", *args, "--out", str(out)], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(4800):  # poll for the first checkpoint (at most ~4 minutes)
        if ckpt.latest_checkpoint(out) is not None:
            break
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (out / "model").exists(), "the run finished before it could be killed"
    resumed = cli(*args, "--out", str(out), "--resume")
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stderr[-2000:]
    return resumed


def assert_resume_is_exact(args: list[str], folder: Path) -> None:
    """``difflab ARGS`` run through, and run again SIGKILLed and resumed, end with equal weights."""
    full = cli(*args, "--out", str(folder / "full"))
    assert full.returncode == 0, full.stderr[-2000:]
    killed_then_resumed(args, folder / "killed")
    a, b = weights(folder / "full"), weights(folder / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path):
    assert_resume_is_exact(["train", "--preset", "tiny", "--max-steps", "16", "--checkpoint-every", "4", "--threads", "1"],
                           tmp_path)


CRASH_ON_SECOND_CHECKPOINT = """
import os, sys
import difflab.train.checkpoint as ckpt
real = ckpt.save_file
calls = []
def crashing(state, path, *a, **k):
    calls.append(path)
    if len(calls) == 4:   # the second checkpoint's EMA file: die half-way through writing it
        open(path, "wb").write(b"partial")
        os._exit(9)
    return real(state, path, *a, **k)
ckpt.save_file = crashing
from difflab.train import preset, train
train(preset("tiny").replace(max_steps=12, checkpoint_every=4, threads=1), sys.argv[1], log=lambda *a: None)
"""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one(tmp_path):
    run = subprocess.run([sys.executable, "-c", CRASH_ON_SECOND_CHECKPOINT, str(tmp_path)], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 9, run.stderr[-2000:]
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.name == "step-4"
    assert any(p.name.startswith(".tmp-") for p in (tmp_path / "checkpoints").iterdir())
    saved = ckpt.load_checkpoint(latest)
    assert saved["state"]["step"] == 4
    trainer = Trainer(TINY.replace(max_steps=12, checkpoint_every=4), tmp_path, resume=True, log=lambda *a: None)
    assert trainer.step == 4
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "checkpoints").iterdir())


def test_non_finite_losses_are_skipped_counted_and_stop_the_run(tmp_path, monkeypatch):
    real = denoising_module.diffusion_loss
    calls = []

    def sometimes_nan(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) in (3, 4) or len(calls) >= 8 else loss

    monkeypatch.setattr(denoising_module, "diffusion_loss", sometimes_nan)
    trainer = Trainer(TINY.replace(max_steps=20, checkpoint_every=2, max_bad_steps=3), tmp_path, log=lambda *a: None)
    with pytest.raises(TrainingStopped, match="non-finite"):
        trainer.fit()
    assert trainer.skipped == 5 and trainer.step == 5  # calls 3, 4 skipped; 8, 9, 10 stop the run
    assert all(torch.isfinite(v).all() for v in trainer.unwrapped.state_dict().values())
    saved = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))
    assert saved["state"]["step"] == 4 and all(torch.isfinite(v).all() for v in saved["model"].values())


def test_two_processes_train_like_one(tmp_path):
    args = ["--preset", "tiny", "--max-steps", "3", "--checkpoint-every", "0", "--threads", "1"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "difflab",
                          "train", *args, "--out", str(tmp_path / "two")], env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "on 2 process(es)" in two.stdout and "global batch 8" in two.stdout
    one = cli("train", *args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    # same global batch, same per-sample noise: only the order of the gradient sum differs
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)




def test_resume_refuses_another_configuration(tmp_path):
    Trainer(TINY.replace(max_steps=2, checkpoint_every=2), tmp_path, log=lambda *a: None).fit()
    with pytest.raises(ValueError, match="another configuration"):
        Trainer(TINY.replace(max_steps=2, lr=1.0), tmp_path, resume=True, log=lambda *a: None)
    with pytest.raises(ValueError, match="--resume"):
        Trainer(TINY.replace(max_steps=2), tmp_path, log=lambda *a: None)


def test_log_rows_go_to_csv_and_to_tensorboard_when_it_is_installed(tmp_path, monkeypatch):
    scalars = []

    class Recorder:
        def add_scalar(self, name, value, step):
            scalars.append((name, step))

        def flush(self):
            pass

    monkeypatch.setattr(trainer_module, "tensorboard_writer", lambda folder: Recorder())
    Trainer(TINY.replace(max_steps=10, log_every=5, checkpoint_every=0), tmp_path, log=lambda *a: None).fit()
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,images_per_s") and [r.split(",")[0] for r in rows[1:]] == ["5", "10"]
    assert ("train/loss", 5) in scalars and ("train/loss", 10) in scalars and ("train/lr", 10) in scalars


def test_init_from_grows_a_model_that_first_computes_what_the_package_did(tmp_path):
    quiet = lambda *a: None
    first = Trainer(TINY.replace(max_steps=2, checkpoint_every=0), tmp_path / "a", log=quiet)
    package = first.fit()
    grown_config = TINY.replace(model={**TINY.model, "attention_positions": True}, init_from=str(package),
                                max_steps=3, checkpoint_every=0)
    lines = []
    grown = Trainer(grown_config, tmp_path / "b", log=lines.append)
    assert any("new ones that start as the identity" in line for line in lines)
    source = load_file(package / "model.safetensors")
    state = grown.unwrapped.state_dict()
    assert all(torch.equal(state[k], v) for k, v in source.items())
    assert all(not state[k].any() for k in set(state) - set(source)) and set(state) > set(source)
    grown.fit()
    lineage = json.loads((tmp_path / "b" / "model" / "config.json").read_text())["training"]
    assert lineage["init_from"] == str(package) and lineage["parent"]["steps_done"] == 2
    moved = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert any(moved[k].any() for k in set(moved) - set(source))           # the new parts train
    # a package whose architecture differs is refused before any step
    wider = TINY.replace(model={**TINY.model, "channels": (16, 48)}, init_from=str(package))
    with pytest.raises(ValueError, match="shape"):
        Trainer(wider, tmp_path / "c", log=quiet)


@pytest.mark.parametrize("args,message", [
    (["train", "--preset", "huge", "--out", "x"], "unknown preset"),
    (["train", "--preset", "tiny", "--max-steps", "-1", "--out", "x"], "max_steps"),
    (["train", "--preset", "tiny", "--lr", "fast", "--out", "x"], "--lr expects a float"),
    (["train", "--preset", "tiny", "--colour", "red", "--out", "x"], "unknown option"),
    (["train", "--preset", "tiny", "--prediction-type", "epsilon", "--out", "x"], "prediction_type"),
    (["generate", "a red circle", "--model", "nowhere"], "not a difflab model package"),
    (["generate", "--recipe", "missing.png"], "cannot read"),
    (["train", "--preset", "tiny", "--init-from", "nowhere", "--out", "x"], "no model package at nowhere"),
])
def test_bad_cli_arguments_print_one_line_and_write_nothing(tmp_path, args, message):
    run = subprocess.run([sys.executable, "-m", "difflab", *args], env=ENV, capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr
    assert list(tmp_path.iterdir()) == []
