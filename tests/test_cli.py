"""The command line under hostile input: every refusal is one `error:` line, exit status 2, no
traceback, nothing written or changed, and it runs under a 2 GB address-space limit; plus the CLI's
own behaviour (train's fields and booleans, --debug, bench, eval's balanced sample and report names,
training from an image folder, resuming past a damaged checkpoint)."""

import hashlib
import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

import difflab.cli as cli
from difflab.train.flags import parse_field_flags
from difflab.testing.hostile import BUNDLED, HOSTILE, hostile_files
from difflab.metrics.bench import balanced, bench_prompts

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def difflab(*args, cwd, python=None, timeout=300):
    command = [sys.executable, "-c", python, *args] if python else [sys.executable, "-m", "difflab", *args]
    return subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, timeout=timeout, preexec_fn=limit_memory)


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.is_symlink(), p.stat().st_mode,
                                        hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("args, message", [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_hostile_arguments_are_refused_in_one_line_writing_nothing(tmp_path, args, message):
    hostile_files(tmp_path)
    before = snapshot(tmp_path)
    run = difflab(*args, cwd=tmp_path)
    stderr, stdout = run.stderr.decode(errors="replace"), run.stdout.decode(errors="replace")
    lines = stderr.strip().splitlines()
    assert run.returncode == 2, stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-2000:]
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in stderr + stdout and stdout == ""
    assert snapshot(tmp_path) == before


# Refusals that must come before torch is imported (what keeps them well under 2 s and 1 GB; the
# times are measured in benchmarks/refusals.py, not asserted here).
BEFORE_TORCH = ["steps-0", "n-10000", "unknown-sampler", "prompt-not-utf8", "recipe-bad-json", "recipe-steps-1e9",
                "image-20000-squared", "outpaint-huge", "mask-wrong-size", "out-is-a-file", "eval-out-is-a-folder",
                "eval-steps-1e9", "train-resume-without-checkpoint", "train-folder-empty", "train-out-is-a-file",
                "unknown-option", "serve-open-host-no-token", "serve-outputs-a-file", "serve-model-missing",
                "prediction-type-for-a-package", "guidance-method-unknown", "lora-missing", "deep-cache-0",
                "video-format-unknown", "recipe-wav-not-audio", "train-lora-without-init-from"]
TORCH_PROBE = ("import sys\nsys.argv[0] = 'difflab'\ntry:\n    from difflab.cli import main\n    main()\n"
               "finally:\n    print('torch imported' if 'torch' in sys.modules else 'torch not imported')")


@pytest.mark.parametrize("name", BEFORE_TORCH)
def test_refusals_come_before_torch_is_imported(tmp_path, name):
    hostile_files(tmp_path)
    args = next(case[1] for case in HOSTILE if case[0] == name)
    run = difflab(*args, cwd=tmp_path, python=TORCH_PROBE)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stdout.decode().strip() == "torch not imported"


NO_DIFFUSERS = "import sys; sys.modules['diffusers'] = None; sys.argv[0] = 'difflab'; from difflab.cli import main; main()"


def test_bench_samplers_without_the_dev_extra_names_the_package(tmp_path):
    run = difflab("bench", "samplers", "--quick", cwd=tmp_path, python=NO_DIFFUSERS)
    lines = run.stderr.decode().strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr[-2000:]
    assert "needs diffusers" in lines[0] and 'pip install -e ".[dev]"' in lines[0]
    assert list(tmp_path.iterdir()) == []


BROKEN_EVAL = ("import sys, difflab.metrics.evaluation as e\n"
               "def evaluate(*a, **k):\n    return {}['boom']\n"
               "e.evaluate = evaluate; sys.argv[0] = 'difflab'\nfrom difflab.cli import main; main()")


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    run = difflab("eval", BUNDLED, "--limit", "1", cwd=tmp_path, python=BROKEN_EVAL)
    assert run.returncode == 1
    assert run.stderr.decode().strip().splitlines() == [
        "error: unexpected KeyError: 'boom' (re-run with --debug for the traceback)"]
    debug = difflab("eval", BUNDLED, "--limit", "1", "--debug", cwd=tmp_path, python=BROKEN_EVAL)
    assert debug.returncode == 1 and "Traceback" in debug.stderr.decode() and "KeyError" in debug.stderr.decode()


def test_train_help_lists_every_training_field():
    import dataclasses

    from difflab.train import TrainConfig

    result = CliRunner().invoke(cli.app, ["train", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for field in dataclasses.fields(TrainConfig):
        if field.name != "model":
            assert "--" + field.name.replace("_", "-") in result.output, field.name
    assert "--ema-warmup / --no-ema-warmup" in result.output and "[model] (TOML)" in result.output


def test_training_booleans_take_every_form():
    parse = parse_field_flags
    assert parse(["--no-ema-warmup", "--lr", "0.1"]) == {"ema_warmup": False, "lr": 0.1}
    assert parse(["--ema-warmup", "--max-steps", "3"]) == {"ema_warmup": True, "max_steps": 3}
    assert parse(["--rescale-zero-terminal-snr"]) == {"rescale_zero_terminal_snr": True}
    assert parse(["--ema-warmup", "false", "--max-steps=7"]) == {"ema_warmup": False, "max_steps": 7}
    assert parse(["--ema-warmup=yes"]) == {"ema_warmup": True}
    with pytest.raises(ValueError, match="unknown option '--no-lr'"):
        parse(["--no-lr"])


def test_bench_networks_loads_its_module_and_samplers_write_outside_the_tracked_results(tmp_path, monkeypatch):
    module = cli._benchmark("networks", "diffusers")        # its dataclass needs the module in sys.modules
    assert callable(module.main) and module.Contender.__module__ in sys.modules
    calls = []
    monkeypatch.setattr(cli, "_benchmark", lambda name, *r: type("M", (), {"main": staticmethod(
        lambda **kw: calls.append(kw))}))
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(cli.app, ["bench", "samplers", "--quick"]).exit_code == 0
    assert calls[0]["out"] == "outputs/bench"
    assert "outputs/" in (Path(cli.__file__).parents[1] / ".gitignore").read_text().splitlines()


def test_eval_limit_is_a_balanced_sample_over_categories():
    entries = bench_prompts()
    sample = balanced(entries, 60)
    counts = {}
    for entry in sample:
        counts[entry["category"]] = counts.get(entry["category"], 0) + 1
    assert len(sample) == 60 and set(counts.values()) == {10} and len(counts) == 6
    assert sample == balanced(entries, 60) and balanced(entries, None) == entries
    single = [e["prompt"] for e in sample if e["category"] == "single_object"]
    assert len(set(single)) == 10                         # distinct prompts before repeats


@pytest.fixture(scope="module")
def class_package(tmp_path_factory):
    from difflab.models import UNet
    from difflab.schedules import NoiseSchedule

    folder = tmp_path_factory.mktemp("eval") / "tiny"
    names = [e["prompt"] for e in balanced(bench_prompts(), 2)]
    model = UNet(3, 3, channels=(8, 16), norm_groups=4, head_dim=8, num_classes=len(names), attention_levels=(),
                 mid_attention=False)
    metadata = {"diffusion": {"schedule": NoiseSchedule.linear().to_config(), "prediction_type": "epsilon"},
                "conditioning": {"encoder": {"type": "class_labels", "class_names": names}, "null": ""},
                "data": {"resolution": 32, "channels": 3}}
    model.save_pretrained(folder, metadata=metadata)
    return folder


def test_every_evaluation_report_gets_its_own_name(class_package, tmp_path, monkeypatch):
    from difflab.metrics.evaluation import EvalConfig, evaluate

    monkeypatch.chdir(tmp_path)
    config = EvalConfig(str(class_package), steps=1, limit=2, fid=False)
    first, second = (Path(evaluate(config, progress=False)["out"]) for _ in range(2))
    other = Path(evaluate(EvalConfig(str(class_package), steps=2, limit=2, fid=False), progress=False)["out"])
    assert re.fullmatch(r"eval-tiny-shapes-bench-limit2-[0-9a-f]{8}\.json", first.name)
    assert second.name == "00001-" + first.name and other.name != first.name
    assert first.parent == Path("outputs/eval") and len(list((tmp_path / "outputs" / "eval").iterdir())) == 3
    assert json.loads(first.read_text())["out"] == str(first)


def test_train_on_an_image_folder_warns_about_skipped_files_and_missing_captions(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]):
        Image.new("RGB", (20, 24), colour).save(data / f"image{i}.png")
    (data / "image0.txt").write_text("a red square")
    (data / "zero.jpg").write_bytes(b"")
    (data / "notes.png").write_text("a text file named .png")
    run = difflab("train", "--preset", "tiny", "--dataset", "folder", "--data-dir", "data", "--max-steps", "2",
                  "--checkpoint-every", "0", "--threads", "1", "--out", "run", cwd=tmp_path)
    stderr = run.stderr.decode()
    assert run.returncode == 0, stderr[-3000:]
    warnings = [line for line in stderr.splitlines() if line.startswith("warning: ")]
    assert any("skipping" in w and "zero.jpg" in w and "empty file" in w for w in warnings), stderr
    assert any("skipping" in w and "notes.png" in w for w in warnings), stderr
    assert any("3 of 4 images have no caption" in w and "image1.png" in w for w in warnings), stderr
    assert "Traceback" not in stderr and "Loading weights" not in stderr
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from difflab.train import Trainer, preset

    out = tmp_path_factory.mktemp("ckpt") / "run"
    Trainer(preset("tiny").replace(max_steps=4, checkpoint_every=2, threads=1), out, log=lambda *a: None).fit()
    return out


TINY_RESUME = ["train", "--preset", "tiny", "--max-steps", "6", "--checkpoint-every", "2", "--threads", "1",
               "--resume", "--out"]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_resume_falls_back_past_a_truncated_checkpoint(checkpoints, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(checkpoints, run_dir)
    truncate(run_dir / "checkpoints" / "step-4" / "model.safetensors")
    run = difflab(*TINY_RESUME, "run", cwd=tmp_path)
    stdout = run.stdout.decode()
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    assert re.search(r"step-4 is damaged: model.safetensors cannot be read .*: resuming from the previous "
                     r"complete one, step-2", stdout), stdout
    assert "(step 2)" in stdout
    from difflab.train import checkpoint as ckpt
    assert ckpt.load_checkpoint(run_dir / "checkpoints" / "step-6")["state"]["step"] == 6


def test_resume_refuses_when_every_checkpoint_is_damaged(checkpoints, tmp_path):
    import shutil

    shutil.copytree(checkpoints, tmp_path / "run")
    for step in ("step-2", "step-4"):
        truncate(tmp_path / "run" / "checkpoints" / step / "optimizer.pt")
    before = snapshot(tmp_path)
    run = difflab(*TINY_RESUME, "run", cwd=tmp_path)
    lines = run.stderr.decode().strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr.decode()[-3000:]
    assert re.match(r"error: no complete checkpoint in run/checkpoints: .*step-4 is damaged: optimizer.pt", lines[0])
    assert snapshot(tmp_path) == before
