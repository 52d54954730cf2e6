"""Model packages: bit-exact round trips, metadata, EMA, atomic writes and every refused corruption."""

import json
import os
import pickle
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

import difflab.models as models
from difflab.models import AutoencoderKL, DiT, UNet, load, load_package

torch.set_num_threads(2)


def tiny_models():
    return [UNet(3, 3, channels=(8, 16), norm_groups=4, head_dim=8, num_classes=3, context_dim=6),
            DiT(in_channels=3, hidden_size=32, depth=2, num_heads=4, context_dim=6),
            AutoencoderKL(channels=(8, 16), norm_groups=4, latent_channels=2, scaling_factor=0.3)]


def perturbed(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("index", range(3))
def test_save_load_round_trip_is_bit_exact(tmp_path, index):
    model = perturbed(tiny_models()[index])
    model.save_pretrained(tmp_path / "pkg")
    loaded = load(tmp_path / "pkg")
    assert type(loaded) is type(model) and loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 8, 8)
    out = (lambda m: m.decode(m.encode(x).mode())) if isinstance(model, AutoencoderKL) else (lambda m: m(x, 7.0))
    assert torch.equal(out(model), out(loaded))
    assert type(model).from_pretrained(tmp_path / "pkg").config == model.config


def test_package_layout_metadata_and_ema(tmp_path):
    model = perturbed(tiny_models()[0])
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    metadata = {"diffusion": {"prediction_type": "epsilon", "schedule": {"kind": "scaled_linear"}},
                "data": {"resolution": 8, "channels": 3}, "conditioning": {"text_encoder": {"type": "minilm"}}}
    model.save_pretrained(tmp_path / "pkg", metadata=metadata, ema_state_dict=ema)
    header = json.loads((tmp_path / "pkg" / "config.json").read_text())
    assert header["format_version"] == models.FORMAT_VERSION and header["class_name"] == "UNet"
    assert header["config"]["channels"] == [8, 16]
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "pkg", *(tmp_path / "pkg").iterdir()]}
    assert modes == {"pkg": 0o777 & ~umask, "config.json": 0o666 & ~umask, "model.safetensors": 0o666 & ~umask,
                     "ema.safetensors": 0o666 & ~umask}  # readable by others, like any file the user writes
    package = load_package(tmp_path / "pkg")
    assert package.metadata == metadata and package.has_ema
    ema_model = package.ema_model()
    assert all(torch.equal(ema_model.state_dict()[k], ema[k]) for k in ema)
    with pytest.raises(ValueError, match="not a DiT"):
        DiT.from_pretrained(tmp_path / "pkg")
    with pytest.raises(ValueError, match="reserved"):
        model.save_pretrained(tmp_path / "other", metadata={"config": {}})


def test_save_is_atomic_and_overwrites_only_packages(tmp_path, monkeypatch):
    model = perturbed(tiny_models()[0])
    model.save_pretrained(tmp_path / "pkg")
    before = load(tmp_path / "pkg").state_dict()

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        perturbed(tiny_models()[0]).save_pretrained(tmp_path / "pkg")
    monkeypatch.undo()
    after = load(tmp_path / "pkg").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]          # no temporary folder left behind
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.png").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not a model package"):
        model.save_pretrained(tmp_path / "photos")


@pytest.fixture
def package(tmp_path):
    folder = tmp_path / "pkg"
    perturbed(tiny_models()[0]).save_pretrained(folder)
    return folder


def edit_weights(folder, change):
    state = load_file(folder / "model.safetensors")
    change(state)
    save_file(state, folder / "model.safetensors")


def edit_config(folder, change):
    header = json.loads((folder / "config.json").read_text())
    change(header)
    (folder / "config.json").write_text(json.dumps(header))


CORRUPTIONS = {
    "missing tensor": (lambda f: edit_weights(f, lambda s: s.pop("conv_in.weight")), "missing tensors.*conv_in.weight"),
    "extra tensor": (lambda f: edit_weights(f, lambda s: s.update(extra=torch.zeros(2))), "unexpected tensors.*extra"),
    "wrong shape": (lambda f: edit_weights(f, lambda s: s.update({"conv_in.bias": torch.zeros(9)})),
                    r"'conv_in.bias' has shape \[9\], the model expects \[8\]"),
    "nan": (lambda f: edit_weights(f, lambda s: s["conv_in.bias"].__setitem__(0, float("nan"))), "conv_in.bias.*NaN"),
    "inf": (lambda f: edit_weights(f, lambda s: s["time_mlp.0.weight"].__setitem__((0, 0), float("inf"))), "infinite"),
    "truncated": (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-100]), "truncated"),
    "truncated header": (lambda f: (f / "model.safetensors").write_bytes(b"\x10\x00"), "truncated"),
    "unknown field": (lambda f: edit_config(f, lambda h: h["config"].update(wings=2)), r"unknown UNetConfig field\(s\) \['wings'\]"),
    "missing field": (lambda f: edit_config(f, lambda h: h["config"].pop("in_channels")), "missing required field.*in_channels"),
    "bad field value": (lambda f: edit_config(f, lambda h: h["config"].update(channels=[8, -16])), "channels must be"),
    "unknown class": (lambda f: edit_config(f, lambda h: h.update(class_name="os.system")), "unknown class_name 'os.system'"),
    "format version": (lambda f: edit_config(f, lambda h: h.update(format_version=2)), "unsupported format_version 2"),
    "not json": (lambda f: (f / "config.json").write_text("{oops"), "not valid JSON"),
    "no weights": (lambda f: (f / "model.safetensors").unlink(), "has no model.safetensors"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_packages_are_refused_with_a_named_problem(package, case):
    corrupt, message = CORRUPTIONS[case]
    corrupt(package)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load(package)


def test_corrupt_ema_is_refused(package):
    model = load(package)
    bad = {k: v.clone() for k, v in model.state_dict().items()}
    bad["conv_in.weight"][0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.save_pretrained(package, ema_state_dict=bad)


def test_pickle_files_are_refused_without_being_opened(package, tmp_path, monkeypatch):
    opened = []
    monkeypatch.setattr(pickle, "load", lambda *a, **k: opened.append(a))
    monkeypatch.setattr(torch, "load", lambda *a, **k: opened.append(a))
    (package / "model.safetensors").unlink()
    (package / "pytorch_model.bin").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(FileNotFoundError, match=r"refusing pickle weights \['pytorch_model.bin'\]"):
        load(package)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="refusing pickle file"):
        load(ckpt)
    assert not opened


def test_missing_folder_is_an_error_that_says_nothing_is_downloaded(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load(tmp_path / "runwayml/stable-diffusion-v1-5")
