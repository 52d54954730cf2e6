"""The command line under hostile input: every refusal is one `error:` line, exit status 2, no
traceback, nothing written or changed, and it runs under a 2 GB address-space limit; plus the CLI's
own behaviour (train's fields and booleans, --debug, bench, eval's balanced sample and report names,
training from an image folder, resuming past a damaged checkpoint)."""

import hashlib
import json
import os
import re
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

import difflab.cli as cli
from difflab.metrics.bench import balanced, bench_prompts

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ROOT = os.geteuid() == 0            # root writes through permissions: an unwritable --out is a path under a file
BUNDLED = str(Path(cli.__file__).parent / "assets" / "models" / "shapes")
RECIPE = {"prompt": "a red circle", "seed": 0, "steps": 4, "sampler": "euler", "guidance_scale": 1.0, "spacing": None}


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def difflab(*args, cwd, python=None, timeout=300):
    command = [sys.executable, "-c", python, *args] if python else [sys.executable, "-m", "difflab", *args]
    return subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, timeout=timeout, preexec_fn=limit_memory)


def png_with_text(path, text):
    info = PngImagePlugin.PngInfo()
    info.add_text("difflab", text)
    Image.new("RGB", (32, 32), (200, 30, 30)).save(path, pnginfo=info)


def png_header_only(path, width, height):
    """A PNG that claims width x height pixels (its pixels are never there): a decompression bomb's header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def hostile_files(root: Path) -> None:
    (root / "afile").write_text("not a folder")
    (root / "text.png").write_text("a text file named .png")
    Image.new("RGB", (32, 32)).save(root / "in.png")
    Image.new("L", (16, 16), 255).save(root / "mask16.png")
    Image.new("RGB", (8, 8)).save(root / "norecipe.png")
    png_with_text(root / "badjson.png", "{not json")
    png_with_text(root / "list.png", json.dumps([1, 2]))
    png_with_text(root / "noprompt.png", json.dumps({k: v for k, v in RECIPE.items() if k != "prompt"}))
    png_with_text(root / "floatseed.png", json.dumps({**RECIPE, "seed": 1.5}))
    png_with_text(root / "bigsteps.png", json.dumps({**RECIPE, "steps": 1_000_000_000}))
    png_header_only(root / "huge.png", 20000, 20000)
    for name in ("empty", "fresh", "outputs"):
        (root / name).mkdir()
    (root / "outputs" / "keep.png").write_bytes(b"an earlier output")
    (root / "broken").mkdir()
    (root / "broken" / "zero.jpg").write_bytes(b"")
    (root / "broken" / "text.png").write_text("not an image")
    (root / "locked").mkdir()
    (root / "locked").chmod(0o555)


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.is_symlink(), p.stat().st_mode,
                                        hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


UNWRITABLE = "afile/sub/deeper" if ROOT else "locked"
GEN = ["generate", "a red circle"]
HOSTILE = [
    # output folders, checked before any model is loaded
    ("out-is-a-file", GEN + ["--out", "afile"], r"--out afile is a file"),
    ("out-under-a-file", GEN + ["--out", "afile/sub"], r"--out afile/sub cannot be created: afile is a file"),
    ("out-unwritable", GEN + ["--out", UNWRITABLE], r"not writable|cannot be created"),
    ("eval-out-is-a-folder", ["eval", BUNDLED, "--out", "empty"], r"--out empty is a folder"),
    ("eval-out-under-a-file", ["eval", BUNDLED, "--out", "afile/r.json"], r"afile is a file"),
    ("train-out-is-a-file", ["train", "--preset", "tiny", "--out", "afile"], r"--out afile is a file"),
    ("bench-out-is-a-file", ["bench", "samplers", "--out", "afile"], r"--out afile is a file"),
    # sampling settings and counts
    ("steps-0", GEN + ["--steps", "0"], r"steps must be an integer >= 1, got 0"),
    ("steps-negative", GEN + ["--steps", "-1"], r"steps must be an integer >= 1, got -1"),
    ("steps-1e9", GEN + ["--steps", "1000000000"], r"sampling steps: 1,000,000,000 asked, the limit is"),
    ("unknown-sampler", GEN + ["--sampler", "warp"], r"unknown sampler 'warp'"),
    ("unknown-spacing", GEN + ["--spacing", "cubic"], r"spacing must be one of"),
    ("guidance-inf", GEN + ["--guidance", "inf"], r"guidance_scale must be a finite number"),
    ("n-0", GEN + ["-n", "0"], r"-n must be a positive integer, got 0"),
    ("n-10000", GEN + ["-n", "10000"], r"images per call \(-n\): 10,000 asked, the limit is"),
    ("n-1e12", GEN + ["-n", "1000000000000"], r"images per call \(-n\): 1,000,000,000,000 asked"),
    ("no-prompt", ["generate"], r"give a PROMPT, or --recipe"),
    ("prompt-not-utf8", ["generate", b"a red \xff\xfe circle"], r"PROMPT is not valid UTF-8"),
    ("prompt-too-long", ["generate", "a red circle " * 400], r"PROMPT length in characters: 5,200 asked"),
    ("model-missing", GEN + ["--model", "nowhere"], r"nowhere is not a difflab model package"),
    # recipes
    ("recipe-missing", ["generate", "--recipe", "missing.png"], r"cannot read missing.png"),
    ("recipe-a-folder", ["generate", "--recipe", "empty"], r"cannot read empty"),
    ("recipe-absent", ["generate", "--recipe", "norecipe.png"], r"norecipe.png holds no difflab recipe"),
    ("recipe-bad-json", ["generate", "--recipe", "badjson.png"], r"badjson.png: the difflab recipe is not valid JSON"),
    ("recipe-a-list", ["generate", "--recipe", "list.png"], r"list.png: the difflab recipe must be a JSON object"),
    ("recipe-no-prompt", ["generate", "--recipe", "noprompt.png"], r"noprompt.png: the difflab recipe lacks 'prompt'"),
    ("recipe-float-seed", ["generate", "--recipe", "floatseed.png"], r"seed"),
    ("recipe-steps-1e9", ["generate", "--recipe", "bigsteps.png"], r"steps.*1,000,000,000 asked, the limit is"),
    # edits
    ("image-a-text-file", GEN + ["--image", "afile"], r"--image afile: cannot read it as an image"),
    ("image-text-named-png", GEN + ["--image", "text.png"], r"--image text.png: cannot read it as an image"),
    ("image-20000-squared", GEN + ["--image", "huge.png"], r"--image huge.png: pixels of the input image: "
                                                            r"400,000,000 asked, the limit is"),
    ("mask-wrong-size", GEN + ["--image", "in.png", "--mask", "mask16.png"], r"--mask is 16x16 but --image is 32x32"),
    ("mask-without-image", GEN + ["--mask", "mask16.png"], r"edit an input image: give --image too"),
    ("outpaint-bad-format", GEN + ["--image", "in.png", "--outpaint", "1,2"], r"--outpaint takes four integers"),
    ("outpaint-negative", GEN + ["--image", "in.png", "--outpaint", "-1,0,0,0"], r"--outpaint takes four integers"),
    ("outpaint-and-mask", GEN + ["--image", "in.png", "--mask", "mask16.png", "--outpaint", "1,0,0,0"], r"choose one edit"),
    ("outpaint-huge", GEN + ["--image", "in.png", "--outpaint", "2032,2032,2032,2032"], r"pixels.* asked, the limit is"),
    ("strength-2", GEN + ["--image", "in.png", "--strength", "2"], r"--strength must be a number in \[0, 1\]"),
    ("mask-blur-negative", GEN + ["--image", "in.png", "--mask", "in.png", "--mask-blur", "-1"], r"--mask-blur"),
    # training
    ("train-resume-without-checkpoint", ["train", "--preset", "tiny", "--out", "fresh", "--resume"],
     r"no checkpoint in fresh; run without --resume to start a new run"),
    ("train-folder-without-data-dir", ["train", "--preset", "tiny", "--dataset", "folder", "--out", "fresh"],
     r"data_dir must be a folder for dataset=folder"),
    ("train-folder-empty", ["train", "--preset", "tiny", "--dataset", "folder", "--data-dir", "empty", "--out", "fresh"],
     r"no readable images in 'empty': it holds no files ending in \.png"),
    ("train-folder-all-broken", ["train", "--preset", "tiny", "--dataset", "folder", "--data-dir", "broken", "--out",
                                 "fresh"], r"no readable images in 'broken': all 2 image files were skipped"),
    ("train-bool-not-a-bool", ["train", "--preset", "tiny", "--ema-warmup", "maybe", "--out", "fresh"],
     r"option --ema-warmup expects a bool, got 'maybe'"),
    ("train-flag-without-value", ["train", "--preset", "tiny", "--out", "fresh", "--max-steps"],
     r"option --max-steps needs a value"),
    ("train-unknown-field", ["train", "--preset", "tiny", "--colour", "red", "--out", "fresh"], r"unknown option '--colour'"),
    ("eval-limit-0", ["eval", BUNDLED, "--limit", "0"], r"--limit must be a positive integer"),
]


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
    parse = cli._parse_field_flags
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
