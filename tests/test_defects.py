"""Defects found by using difflab from outside, each pinned by a test that failed before its fix,
and the seams that replaced the copies behind them (model registry, dataset table, image helper)."""

import ast
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import difflab
from difflab.data import DATASETS, load_dataset, to_images, to_tensor
from difflab.data.digits import DigitsDataset
from difflab.data.shapes import ShapesDataset
from difflab.models import DiT, UNet, create_model, load
from difflab.models.base import BUILTIN_MODELS, model_class

ROOT = Path(difflab.__file__).resolve().parent


def run_python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; fails the test with its stderr if it exits non-zero."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# --- public names never share their name with a submodule ------------------------------------
def test_metrics_fid_and_kid_are_the_documented_functions():
    run_python("""
        from difflab.metrics import fid, kid
        assert callable(fid) and callable(kid), (fid, kid)
        import difflab.metrics.evaluation
        from difflab import metrics
        from difflab.metrics import evaluate
        assert callable(metrics.fid) and callable(metrics.kid) and callable(evaluate), (metrics.fid, evaluate)
    """)


@pytest.mark.parametrize("package", ["difflab", "difflab.metrics"])
def test_no_lazily_exported_name_is_also_a_submodule(package):
    module = __import__(package, fromlist=["_EXPORTS"])
    submodules = {info.name for info in pkgutil.iter_modules(module.__path__)}
    assert not set(module._EXPORTS) & submodules


# --- one dataset table; the trainer learns channels and classes from the dataset ----------------
def _caption_folder(root: Path) -> Path:
    colours = [(200, 20, 20), (20, 200, 20), (20, 20, 200)]
    for i, colour in enumerate(colours):
        Image.new("RGB", (20, 24), colour).save(root / f"image{i}.png")
        (root / f"image{i}.txt").write_text(f"caption {i}\n")
    return root


def test_folder_dataset_builds_training_batches(tmp_path):
    from difflab.train.batches import TrainingData
    from difflab.train.config import TrainConfig

    config = TrainConfig(dataset="folder", data_dir=str(_caption_folder(tmp_path)), resolution=16)
    data = TrainingData(config)
    images, captions = data.batch([0, 1, 2])
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.float32
    assert sorted(captions) == ["caption 0", "caption 1", "caption 2"]
    assert data.channels == 3 and not data.class_conditional
    assert -1 <= images.min() and images.max() <= 1


def test_datasets_say_their_channels_and_classes(tmp_path):
    assert set(DATASETS) == {"shapes", "digits", "folder", "moving-shapes", "sounds"}
    assert (DigitsDataset.channels, DigitsDataset.num_classes) == (1, 10)
    assert (ShapesDataset.channels, ShapesDataset.num_classes) == (3, None)
    for name, channels, media in (("moving-shapes", 3, "video"), ("sounds", 1, "audio")):
        dataset = load_dataset(name, "test")
        assert (dataset.channels, dataset.num_classes, dataset.media) == (channels, None, media)
    folder = load_dataset("folder", data_dir=_caption_folder(tmp_path), resolution=8)
    assert (folder.channels, folder.num_classes, len(folder)) == (3, None, 3)
    with pytest.raises(ValueError, match="needs data_dir"):
        load_dataset("folder")


def test_training_batches_name_no_dataset():
    source = (ROOT / "train" / "batches.py").read_text()
    assert not any(name in source for name in ('"digits"', '"shapes"', '"folder"', "FolderDataset"))


# --- Python 3.10: TOML configs read through tomli --------------------------------------------
def test_train_config_reads_toml_without_tomllib(tmp_path):
    (tmp_path / "run.toml").write_text("max_steps = 7\nbatch_size = 4\n")
    run_python(f"""
        import sys, types, tomllib
        tomli = types.ModuleType("tomli")        # what Python 3.10 has: tomli, not tomllib
        tomli.loads, tomli.TOMLDecodeError = tomllib.loads, tomllib.TOMLDecodeError
        sys.modules["tomli"], sys.modules["tomllib"] = tomli, None
        from difflab.train.config import build_config
        config = build_config(None, {str(tmp_path / "run.toml")!r}, {{}})
        assert (config.max_steps, config.batch_size) == (7, 4), config
    """)
    pyproject = (ROOT.parent / "pyproject.toml").read_text()
    assert "\"tomli>=2; python_version < '3.11'\"" in pyproject


# --- the command line promises only what it has ----------------------------------------------
def test_cli_advertises_serve_which_exists_and_info_prints_schedules_and_devices():
    from typer.testing import CliRunner

    import difflab.cli as cli
    from difflab.schedules import KINDS

    assert "serve" in cli.__doc__ and "serve" in [c.name or c.callback.__name__ for c in cli.app.registered_commands]
    result = CliRunner().invoke(cli.app, ["info"])
    assert result.exit_code == 0, result.output
    assert "schedules: " + ", ".join(KINDS) in result.output
    assert "devices: cpu" in result.output
    assert "bundled models: shapes, shapes-v1, shapes-v1.1, shapes-v2, shapes-video, sounds" in result.output
    assert "(the default: shapes-v2.1;" in result.output


def test_info_describes_a_bundled_model_by_name_without_torch():
    import subprocess
    import sys

    probe = ("import sys; sys.argv[0] = 'difflab'; from difflab.cli import main\ntry:\n    main()\nfinally:\n"
             "    print('torch imported' if 'torch' in sys.modules else 'torch not imported')")
    run = subprocess.run([sys.executable, "-c", probe, "info", "shapes-video"], capture_output=True, text=True)
    rows = dict(line.split(":", 1) for line in run.stdout.splitlines() if ":" in line)
    assert run.returncode == 0, run.stderr
    assert rows["network"].strip() == "VideoUNet" and rows["makes"].strip() == "video, 8 frames"
    assert run.stdout.strip().endswith("torch not imported")
    fast = subprocess.run([sys.executable, "-m", "difflab", "info", "shapes-fast"], capture_output=True, text=True)
    rows = dict(line.split(":", 1) for line in fast.stdout.splitlines() if ":" in line)
    sampling = dict(part.split(" ", 1) for part in rows["sampling"].strip().split(", "))
    assert (sampling["sampler"], sampling["steps"], rows["network"].strip()) == ("lcm", "4", "UNet")
    assert rows["resolution"].strip().startswith("64 px") and "VAE" in rows["makes"]   # v2's student, decoded


# --- importing the text encoders changes no environment variable ------------------------------
def test_importing_text_encoders_leaves_the_environment_alone():
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR")}
    run_python("""
        import os
        before = dict(os.environ)
        import difflab.models.text
        assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())
    """, env=keep)


# --- models/base.py: the registry imports no network; create_model builds any class -----------
def _imports(path: Path, module_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.startswith("difflab")}


def test_base_and_package_import_no_network():
    networks = {"difflab.models.unet", "difflab.models.dit", "difflab.models.vae", "difflab.models.layers",
                "difflab.models.text"}
    for name in ("base", "package", "registry"):
        assert not _imports(ROOT / "models" / f"{name}.py", module_level_only=False) & networks, name
    assert _imports(ROOT / "models" / "registry.py", module_level_only=False) == set()
    assert _imports(ROOT / "models" / "package.py", module_level_only=False) <= {"difflab", "difflab.models.registry",
                                                                                   "difflab.limits"}


def test_create_model_by_name():
    fields = dict(in_channels=3, out_channels=3, channels=[8, 16], attention_levels=[1], head_dim=8, norm_groups=4)
    torch.manual_seed(0)
    model = create_model("UNet", **fields)
    torch.manual_seed(0)
    direct = UNet(**{**fields, "channels": (8, 16), "attention_levels": (1,)})
    assert isinstance(model, UNet) and model.config == direct.config
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), direct.state_dict().values()))
    assert isinstance(create_model("DiT", in_channels=4, hidden_size=32, depth=1, num_heads=2), DiT)
    assert set(BUILTIN_MODELS) <= {model_class(name).__name__ for name in BUILTIN_MODELS}
    with pytest.raises(ValueError, match=r"unknown model class 'Transformer'; known: \['AutoencoderKL', 'ControlNet', 'DiT', 'IPAdapter', 'MMDiT', 'SDControlNet', 'SDUNet', 'UNet'"):
        create_model("Transformer")
    with pytest.raises(ValueError, match=r"unknown UNetConfig field\(s\) \['wings'\]"):
        create_model("UNet", wings=2, **fields)


def test_a_package_loads_in_a_fresh_process_through_the_lazy_registry(tmp_path):
    torch.manual_seed(0)
    model = DiT(in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=3, pooled_dim=5)
    model.save_pretrained(tmp_path / "pkg")
    run_python(f"""
        from difflab.models.package import load
        model = load({str(tmp_path / "pkg")!r})
        assert type(model).__name__ == "DiT" and model.null_class == 3
    """)
    assert torch.equal(load(tmp_path / "pkg").state_dict()["class_embed.weight"], model.state_dict()["class_embed.weight"])


# --- one image <-> tensor helper, bit-identical to the conversions it replaced -----------------
def test_image_helper_matches_the_old_conversions_bit_for_bit():
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = Image.fromarray(np.stack([pixels, pixels[::-1], pixels.T], -1))
    for image, channels in ((rgb, 3), (Image.fromarray(pixels), 1)):
        mode = "RGB" if channels == 3 else "L"
        old = np.asarray(image.convert(mode), dtype=np.float32).reshape(16, 16, channels) / 127.5 - 1  # edit.py
        new = to_tensor(image, channels)[0].permute(1, 2, 0).numpy()
        assert np.array_equal(old.view(np.int32), new.view(np.int32))
    x = torch.linspace(-1.2, 1.2, 3 * 8 * 8).reshape(1, 3, 8, 8)
    old = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # pipeline
    assert np.array_equal(np.asarray(to_images(x)[0]), old[0])
    assert np.array_equal(np.asarray(to_images(to_tensor(rgb))[0]), np.asarray(rgb))


def test_to_images_refuses_non_finite_values():
    x = torch.zeros(2, 3, 8, 8)
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite values; no image was written"):
        to_images(x)
    with pytest.raises(ValueError, match="shape"):
        to_images(torch.zeros(3, 8, 8))
