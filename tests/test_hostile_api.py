"""Hostile inputs to the Python API (issue 12): each is refused before any compute, with the documented
exception type and one line naming the problem; the ones that used to allocate gigabytes run in a
subprocess under a 2 GiB address-space limit and must be refused there, under 1 GiB of peak RSS.

Packages are built in tmp_path from the bundled model's config.json (edited by hand) and weights.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

import difflab
from difflab import limits
from difflab.limits import LimitError
from difflab.pipelines import Pipeline, edit, read_recipe
from difflab.settings import BUNDLED_MODELS

SHAPES = BUNDLED_MODELS["shapes"]   # the 32x32 pixel model: the sizes in the messages below are its

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = difflab.NoiseSchedule.cosine()
RECIPE = {"prompt": "a red circle", "seed": 1, "steps": 2, "sampler": "euler", "guidance_scale": 3.0, "spacing": None}


def identity(x, t, **cond):
    return x


# --- building hostile files --------------------------------------------------------------------
def package(tmp: Path, edit_header=None, weights: bytes | None = None, name: str = "pkg") -> Path:
    """A copy of the bundled package with config.json edited and (optionally) other weights bytes."""
    folder = tmp / name
    folder.mkdir()
    header = json.loads((SHAPES / "config.json").read_text())
    if edit_header is not None:
        edit_header(header)
    (folder / "config.json").write_text(json.dumps(header))
    if weights is None:
        os.symlink((SHAPES / "model.safetensors").resolve(), folder / "model.safetensors")
    else:
        (folder / "model.safetensors").write_bytes(weights)
    return folder


def safetensors_header(obj) -> bytes:
    data = json.dumps(obj).encode()
    return struct.pack("<Q", len(data)) + data


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height pixels (the pixel data is a stub: never decoded)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def recipe_png(path: Path, text: str) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("difflab", text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def with_key(key, value):
    return json.dumps({**RECIPE, key: value})


def header_set(path: str, value):
    """An edit of config.json: ``header_set("data.resolution", 100000)``."""
    def apply(header):
        *parents, last = path.split(".")
        node = header
        for part in parents:
            node = node[part]
        node[last] = value
    return apply


def drop_schedule(header):
    del header["diffusion"]["schedule"]


# --- in-process cases: (name, call(pipe, tmp), exception type, message regex) ---------------------
CASES = [
    # Pipeline.__call__ arguments
    ("seed float", lambda p, t: p("a red circle", seed=1.5), ValueError, r"^seed must be an integer .* got 1\.5$"),
    ("seed path string", lambda p, t: p("a red circle", seed="../../x"), ValueError, r"^seed must be an integer"),
    ("seed list of floats", lambda p, t: p("a red circle", num_images=2, seed=[1, 2.5]), ValueError, r"each seed"),
    ("seed past 2**63", lambda p, t: p("a red circle", seed=2**63), ValueError, r"each seed must be an integer in"),
    ("guidance_rescale string", lambda p, t: p("a red circle", guidance_rescale="x"), ValueError,
     r"guidance_rescale must be in \[0, 1\]"),
    ("num_images 0", lambda p, t: p("a red circle", num_images=0), ValueError, r"num_images must be a positive"),
    ("num_images bool", lambda p, t: p("a red circle", num_images=True), ValueError, r"num_images"),
    ("num_images float", lambda p, t: p("a red circle", num_images=2.0), ValueError, r"num_images"),
    ("prompts x num_images", lambda p, t: p(["a red circle"] * 8, num_images=9), LimitError,
     r"images in one call \(8 prompt.*72 asked, the limit is 64; raise it with DIFFLAB_MAX_IMAGES"),
    ("prompt too long", lambda p, t: p("a red circle " * 400), LimitError,
     r"prompt length in characters: 5,200 asked, the limit is 2,000; raise it with DIFFLAB_MAX_PROMPT_CHARS"),
    ("negative prompt too long", lambda p, t: p("a red circle", negative_prompt="x" * 2001), LimitError,
     r"negative_prompt length"),
    ("prompt bytes", lambda p, t: p(b"a red circle"), ValueError, r"prompt is not valid UTF-8 text"),
    ("prompt lone surrogate", lambda p, t: p("a red \udcff circle"), ValueError,
     r"prompt is not valid UTF-8 text: '\\udcff' at character 6"),
    ("negative prompt bytes", lambda p, t: p("a red circle", negative_prompt=b"x"), ValueError,
     r"negative_prompt is not valid UTF-8 text"),
    ("prompt not text", lambda p, t: p(3.5), ValueError, r"prompt must be a string"),
    ("prompt list with int", lambda p, t: p(["a red circle", 3]), ValueError, r"prompt must be a string, got int"),
    ("steps 0", lambda p, t: p("a red circle", steps=0), ValueError, r"steps must be an integer >= 1"),
    ("steps 1001", lambda p, t: p("a red circle", steps=1001), LimitError,
     r"sampling steps: 1,001 asked, the limit is 1,000; raise it with DIFFLAB_MAX_STEPS"),
    ("unknown sampler", lambda p, t: p("a red circle", sampler="warp"), ValueError, r"unknown sampler 'warp'"),
    ("outpaint negative", lambda p, t: p("a", image=Image.new("RGB", (32, 32)), outpaint=(-4, 0, 0, 0)), ValueError,
     r"outpaint must be \(left, right, top, bottom\)"),
    ("outpaint strings", lambda p, t: p("a", image=Image.new("RGB", (32, 32)), outpaint=("4", 0, 0, 0)), ValueError,
     r"outpaint must be"),
    ("outpaint past the limit", lambda p, t: p("a", image=Image.new("RGB", (32, 32)), outpaint=(0, 0, 0, 2032)),
     LimitError, r"outpaint \(0, 0, 0, 2032\) makes a 32x2064 image: pixels per image .*66,048 asked.*DIFFLAB_MAX_PIX"),
    ("edit image past the limit", lambda p, t: p("a", image=Image.new("RGB", (512, 512)), strength=0.5), LimitError,
     r"output size 512x512: pixels per image in model space \(512x512\): 262,144 asked, the limit is 65,536"),
    ("image mode F", lambda p, t: p("a", image=Image.new("F", (32, 32)), strength=0.5), ValueError,
     r"image has mode 'F', which difflab does not read"),
    ("image not PIL", lambda p, t: p("a", image=np.zeros((32, 32, 3)), strength=0.5), ValueError,
     r"image must be a PIL image"),
    ("16-bit values out of range", lambda p, t: p("a", image=Image.fromarray(np.full((32, 32), 70000, np.int32), "I"),
                                                 strength=0.5), ValueError, r"values outside 0\.\.65535"),
    # recipes: files (read_recipe) and dicts (replay)
    ("recipe bad JSON", lambda p, t: read_recipe(recipe_png(t / "r.png", "{not json")), ValueError,
     r"r\.png: the difflab recipe is not valid JSON: "),
    ("recipe JSON list", lambda p, t: read_recipe(recipe_png(t / "r.png", "[1, 2]")), ValueError,
     r"r\.png: the difflab recipe must be a JSON object, got a JSON array"),
    ("recipe lacks prompt", lambda p, t: read_recipe(recipe_png(t / "r.png", json.dumps({"seed": 1}))), ValueError,
     r"r\.png: the difflab recipe lacks 'prompt', 'steps'"),
    ("recipe seed float", lambda p, t: read_recipe(recipe_png(t / "r.png", with_key("seed", 1.5))), ValueError,
     r"r\.png: the difflab recipe: seed must be an integer in \[0, 2\*\*63\), got 1\.5"),
    ("recipe seed path", lambda p, t: read_recipe(recipe_png(t / "r.png", with_key("seed", "../../x"))), ValueError,
     r"seed must be an integer .* got '\.\./\.\./x'"),
    ("recipe steps 1e9", lambda p, t: read_recipe(recipe_png(t / "r.png", with_key("steps", 1e9))), ValueError,
     r"steps must be an integer >= 1, got 1000000000\.0"),
    ("recipe steps 10**9", lambda p, t: read_recipe(recipe_png(t / "r.png", with_key("steps", 10**9))), LimitError,
     r"r\.png: the difflab recipe: sampling steps: 1,000,000,000 asked"),
    ("recipe unknown sampler", lambda p, t: read_recipe(recipe_png(t / "r.png", with_key("sampler", "warp"))),
     ValueError, r"unknown sampler 'warp'"),
    ("recipe outpaint string", lambda p, t: read_recipe(recipe_png(t / "r.png", with_key("outpaint", "1,2,3,4"))),
     ValueError, r"outpaint must be a list of four"),
    ("recipe not a PNG", lambda p, t: read_recipe((t / "r.png").write_text("text") and t / "r.png"), ValueError,
     r"cannot read .*r\.png as an image"),
    ("replay a list", lambda p, t: p.replay([1, 2]), ValueError, r"^recipe: the difflab recipe must be a JSON object"),
    ("replay seed float", lambda p, t: p.replay({**RECIPE, "seed": 1.5}), ValueError, r"seed must be an integer"),
    ("replay steps", lambda p, t: p.replay({**RECIPE, "steps": 5000}), LimitError, r"sampling steps: 5,000 asked"),
    # packages
    ("from_pretrained(123)", lambda p, t: Pipeline.from_pretrained(123), ValueError,
     r"from_pretrained\(folder\): folder must be the path of a model package folder .* got int 123"),
    ("from_pretrained(no package)", lambda p, t: Pipeline.from_pretrained(t), ValueError,
     r"is not a difflab model package"),
    ("package without schedule", lambda p, t: Pipeline.from_pretrained(package(t, drop_schedule)), ValueError,
     r"pkg/config\.json: the 'diffusion' section has no 'schedule'"),
    ("package sampling.steps 1e9", lambda p, t: Pipeline.from_pretrained(package(t, header_set("sampling", {"steps": 1e9}))),
     ValueError, r"config\.json 'sampling': steps must be an integer >= 1"),
    ("package sampling.steps 10**9",
     lambda p, t: Pipeline.from_pretrained(package(t, header_set("sampling", {"steps": 10**9}))), LimitError,
     r"config\.json 'sampling': sampling steps: 1,000,000,000 asked"),
    ("package prediction type", lambda p, t: Pipeline.from_pretrained(
        package(t, header_set("diffusion.prediction_type", "noise"))), ValueError,
     r"config\.json: diffusion\.prediction_type: "),
    ("package data channels", lambda p, t: Pipeline.from_pretrained(package(t, header_set("data.channels", 4))),
     ValueError, r"config\.json: data\.channels: a pixel codec takes 1 or 3 channels"),
    ("package resolution not int", lambda p, t: Pipeline.from_pretrained(package(t, header_set("data.resolution", "32"))),
     ValueError, r"data\.resolution must be a positive integer"),
    ("package timesteps", lambda p, t: Pipeline.from_pretrained(
        package(t, header_set("diffusion.schedule.num_train_timesteps", 10**12))), LimitError,
     r"num_train_timesteps: 1,000,000,000,000 asked.*DIFFLAB_MAX_TRAIN_TIMESTEPS"),
    ("package too many modules", lambda p, t: Pipeline.from_pretrained(
        package(t, header_set("config.layers_per_block", 100000))), LimitError,
     r"UNet of .*config\.json: modules of the network: more than 10,000 asked"),
    ("package config field", lambda p, t: Pipeline.from_pretrained(package(t, header_set("config.head_dim", 0))),
     ValueError, r"config\.json: head_dim must be a positive integer"),
    ("safetensors header a list", lambda p, t: Pipeline.from_pretrained(package(t, weights=safetensors_header([1]))),
     ValueError, r"pkg/model\.safetensors has a corrupt safetensors header: a JSON list"),
    ("safetensors without data_offsets", lambda p, t: Pipeline.from_pretrained(
        package(t, weights=safetensors_header({"w": {"dtype": "F32", "shape": [1]}}))), ValueError,
     r"model\.safetensors has a corrupt safetensors header: tensor 'w' lacks valid 'data_offsets'"),
    # input image files
    ("image file not an image", lambda p, t: edit.open_image((t / "x.png").write_text("hi") and t / "x.png"),
     ValueError, r"image .*x\.png: cannot read it as an image"),
    ("image file truncated", lambda p, t: edit.open_image(png_header_only(t / "x.png", 64, 64)), ValueError,
     r"cannot read it as an image"),
    ("image file past the limit", lambda p, t: edit.open_image(png_header_only(t / "x.png", 5000, 4000)), LimitError,
     r"x\.png: pixels of the input image \(5000x4000\): 20,000,000 asked, the limit is 16,777,216; raise it with "
     r"DIFFLAB_MAX_INPUT_PIXELS"),
    # difflab.sample
    ("sample on a missing device", lambda p, t: difflab.sample(identity, SCHEDULE, "epsilon", "euler", 2,
                                                              shape=(1, 3, 8, 8), device="cuda:99"), ValueError,
     r"device 'cuda:99' is not available on this machine; available: cpu"),
    ("sample on a nonsense device", lambda p, t: difflab.sample(identity, SCHEDULE, "epsilon", "euler", 2,
                                                               shape=(1, 3, 8, 8), device="gpu7"), ValueError,
     r"device must be a torch device"),
    ("sample int64", lambda p, t: difflab.sample(identity, SCHEDULE, "epsilon", "euler", 2, shape=(1, 3, 8, 8),
                                                 dtype=torch.int64), ValueError,
     r"dtype must be a floating-point dtype, one of float32, float16, bfloat16, float64 .* got torch\.int64"),
    ("sample dtype name unknown", lambda p, t: difflab.sample(identity, SCHEDULE, "epsilon", "euler", 2,
                                                             shape=(1, 3, 8, 8), dtype="float8"), ValueError,
     r"dtype must be a floating-point dtype.* got 'float8'"),
    ("sample steps", lambda p, t: difflab.sample(identity, SCHEDULE, "epsilon", "euler", 10**9, shape=(1, 3, 8, 8)),
     LimitError, r"sampling steps: 1,000,000,000 asked"),
    ("sample shape not a tuple", lambda p, t: difflab.sample(identity, SCHEDULE, "epsilon", "euler", 2, shape="big"),
     ValueError, r"shape must be a tuple of positive integers"),
    # the text encoder itself
    ("encoder lone surrogate", lambda p, t: p.encoder.encode(["ok", "\udcff"]), ValueError,
     r"prompt is not valid UTF-8 text"),
    ("encoder bytes", lambda p, t: p.encoder.encode(b"a red circle"), ValueError, r"prompt is not valid UTF-8 text"),
    # the limits themselves
    ("override an unknown limit", lambda p, t: limits.override(memory=1), ValueError, r"unknown limit\(s\) \['memory'\]"),
    ("override to zero", lambda p, t: limits.override(images=0), ValueError, r"limit images must be a positive integer"),
    ("environment not a number", lambda p, t: limits.from_environment({"DIFFLAB_MAX_STEPS": "lots"}), ValueError,
     r"DIFFLAB_MAX_STEPS must be a positive integer, got 'lots'"),
]


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_pretrained("shapes")


class ReachedCompute(Exception):
    """Raised by the stand-ins for prompt encoding and sampling: a refusal must come before them."""


def no_compute(*args, **kwargs):
    raise ReachedCompute("the call reached compute instead of being refused first")


@pytest.mark.parametrize("name,call,error,message", CASES, ids=[case[0] for case in CASES])
def test_refused_in_one_line(pipe, tmp_path, monkeypatch, name, call, error, message):
    monkeypatch.setattr(importlib.import_module("difflab.pipelines.image"), "sample", no_compute)
    monkeypatch.setattr(Pipeline, "_encode", no_compute)
    monkeypatch.setattr(importlib.import_module("difflab.sampling"), "_Progress", no_compute)
    with pytest.raises(error) as raised:
        call(pipe, tmp_path)
    text = str(raised.value)
    assert "\n" not in text and len(text) < 600, text
    assert type(raised.value) is error or error is ValueError and not isinstance(raised.value, LimitError), \
        f"{type(raised.value).__name__}: {text}"
    assert re.search(message, text), text


# --- allocation cases: a subprocess under RLIMIT_AS = 2 GiB ----------------------------------------
RUNNER = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
import difflab, torch
from PIL import Image
from difflab.pipelines import Pipeline, edit, read_recipe
try:
    {setup}
    {call}
except Exception as error:
    print(f"maxrss_mb={{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}}")
    sys.stderr.write(f"{{type(error).__name__}}: {{error}}\\n")
    sys.exit(2)
print("accepted")
"""
PIPE = "pipe = Pipeline.from_pretrained('shapes')"
MEMORY_CASES = [
    ("-n 10000", PIPE, "pipe('a red circle', num_images=10000)", "LimitError", r"images in one call.*10,000 asked"),
    ("--steps 10**9", PIPE, "pipe('a red circle', steps=10**9)", "LimitError", r"sampling steps: 1,000,000,000 asked"),
    ("outpaint 2032 x4", PIPE, "pipe('a red circle', image=Image.new('RGB', (32, 32)), outpaint=(2032,) * 4)",
     "LimitError", r"makes a 4096x4096 image: pixels per image in model space \(4096x4096\): 16,777,216 asked"),
    ("outpaint 100000,0,0,0", PIPE, "pipe('a red circle', image=Image.new('RGB', (32, 32)), outpaint=(100000, 0, 0, 0))",
     "LimitError", r"makes a 100032x32 image.*3,201,024 asked, the limit is 65,536"),
    ("--image 20000x20000", "pass", "edit.open_image({png20k!r})", "LimitError",
     r"pixels of the input image: 400,000,000 asked, the limit is 16,777,216"),
    ("--image 8192x8192", "pass", "edit.open_image({png8k!r})", "LimitError", r"67,108,864 asked"),
    ("--recipe 20000x20000", "pass", "read_recipe({png20k!r})", "LimitError", r"recipe image .*400,000,000 asked"),
    ("recipe steps 10**9", "pass", "read_recipe({recipe_steps!r})", "LimitError", r"sampling steps: 1,000,000,000"),
    ("package channels 8192", "pass", "Pipeline.from_pretrained({wide!r})", "LimitError",
     r"UNet of .*config\.json: float32 weights in bytes \(30,258,683,907 parameters.*2,000,000,000; raise it"),
    ("package resolution 100000", "pass", "Pipeline.from_pretrained({huge_resolution!r})", "LimitError",
     r"data\.resolution 100000: pixels per image \(100000x100000\): 10,000,000,000 asked"),
    ("sample 10**6 x 3 x 1024^2", "pass", "difflab.sample(lambda x, t: x, difflab.NoiseSchedule.cosine(), 'epsilon', "
     "'euler', 4, shape=(10**6, 3, 1024, 1024))", "LimitError", r"sample: pixels per image in model space"),
    ("sample 1 x 10**9", "pass", "difflab.sample(lambda x, t: x, difflab.NoiseSchedule.cosine(), 'epsilon', "
     "'euler', 4, shape=(1, 10**9))", "LimitError", r"values per call .*1,000,000,000 asked, the limit is 786,432"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    return {"png20k": str(png_header_only(tmp / "20k.png", 20000, 20000)),
            "png8k": str(png_header_only(tmp / "8k.png", 8192, 8192)),
            "recipe_steps": str(recipe_png(tmp / "steps.png", with_key("steps", 10**9))),
            "wide": str(package(tmp, header_set("config.channels", [8192] * 3), name="wide")),
            "huge_resolution": str(package(tmp, header_set("data.resolution", 100000), name="resolution"))}


@pytest.mark.parametrize("name,setup,call,error,message", MEMORY_CASES, ids=[case[0] for case in MEMORY_CASES])
def test_refused_before_allocating(files, name, setup, call, error, message):
    code = RUNNER.format(setup=setup, call=call.format(**files))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env = {k: v for k, v in env.items() if not k.startswith(limits.ENV_PREFIX)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    last = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else ""
    assert run.returncode == 2, f"exit {run.returncode}: {run.stderr[-1500:]}"
    assert last.startswith(f"{error}: ") and re.search(message, last), last
    assert "Traceback" not in run.stderr, run.stderr[-1500:]
    rss = int(run.stdout.split("maxrss_mb=")[1].split()[0])
    assert rss < 1024, f"peak RSS {rss} MB"


# --- what is accepted, converted or only warned about -------------------------------------------
def test_sixteen_bit_png_is_scaled_not_clipped(pipe, tmp_path):
    values = np.linspace(0, 65535, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    Image.fromarray(values).save(tmp_path / "deep.png")
    image = edit.open_image(tmp_path / "deep.png")
    assert image.mode.startswith("I")
    out = np.asarray(pipe("a red circle", image=image, strength=0.0, seed=0, steps=2).images[0])
    expected = np.round(values / 257).astype(np.uint8)
    assert np.array_equal(out[..., 0], expected) and (out == 255).mean() < 0.01


def test_mode_i_image_is_scaled_like_sixteen_bit(pipe):
    values = np.arange(32 * 32, dtype=np.int32).reshape(32, 32) * 64
    out = np.asarray(pipe("a red circle", image=Image.fromarray(values, "I"), strength=0.0, seed=0, steps=2).images[0])
    assert np.array_equal(out[..., 1], ((values + 128) // 257).astype(np.uint8))


def test_float_dtype_names_are_accepted():
    for name, dtype in [("float16", torch.float16), ("bfloat16", torch.bfloat16), ("torch.float64", torch.float64)]:
        out = difflab.sample(identity, SCHEDULE, "epsilon", "euler", 2, shape=(1, 3, 4, 4), seeds=[0], dtype=name)
        assert out.dtype == dtype


def test_a_prompt_outside_the_shapes_vocabulary_warns(pipe):
    with pytest.warns(UserWarning, match=r"'a photo of a cat' uses words outside the shapes model's vocabulary "
                                         r"\(photo, cat\)"):
        pipe("a photo of a cat", seed=0, steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe("a red circle above a blue square", seed=0, steps=1)
        pipe("Two large green crosses on a grey background.", seed=0, steps=1)


def test_other_datasets_get_no_vocabulary_warning(tmp_path):
    other = Pipeline.from_pretrained(package(tmp_path, header_set("data.dataset", "folder")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        other("a photo of a cat", seed=0, steps=1)


def test_limits_can_be_raised_for_a_block_or_from_now_on(pipe):
    assert limits.get().steps == 1000
    with limits.override(steps=3) as inside:
        assert inside.steps == 3
        with pytest.raises(LimitError, match=r"4 asked, the limit is 3; raise it with DIFFLAB_MAX_STEPS"):
            pipe("a red circle", steps=4)
    assert limits.get().steps == 1000
    previous = limits.get()
    try:
        limits.override(images=65)
        assert limits.get().images == 65 and limits.get().steps == 1000
    finally:
        limits.override(**{f: getattr(previous, f) for f in limits.FIELDS})
    assert limits.get() == previous


def test_environment_variables_set_limits():
    found = limits.from_environment({"DIFFLAB_MAX_IMAGES": "256", "DIFFLAB_MAX_NETWORK_BYTES": "8e9",
                                     "DIFFLAB_MAX_PIXELS": "1_048_576"})
    assert (found.images, found.network_bytes, found.pixels, found.steps) == (256, 8_000_000_000, 1 << 20, 1000)


def test_every_limit_is_documented_with_its_default_and_variable():
    doc = limits.__doc__
    for field in limits.FIELDS:
        line = next(line for line in doc.splitlines() if line.startswith(field + " "))
        assert str(getattr(limits.Limits(), field)) in line and limits.env_var(field) in line, field
