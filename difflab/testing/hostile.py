"""Hostile command lines: the table that ``tests/test_cli.py`` asserts on and
``benchmarks/refusals.py`` times. Each case is (name, arguments, a regex the one ``error:`` line
must match); :func:`hostile_files` lays out the files the cases name in a scratch folder.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

from PIL import Image, PngImagePlugin

ROOT = os.geteuid() == 0            # root writes through permissions: an unwritable --out is a path under a file
BUNDLED = str(Path(__file__).resolve().parents[1] / "assets" / "models" / "shapes")
RECIPE = {"prompt": "a red circle", "seed": 0, "steps": 4, "sampler": "euler", "guidance_scale": 1.0, "spacing": None}


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
    (root / "text.wav").write_text("a text file named .wav")
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
    ("no-prompt", ["generate"], r"give a PROMPT, --prompts FILE or --recipe"),
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
    ("prediction-type-for-a-package", GEN + ["--prediction-type", "epsilon"],
     r"--prediction-type \(epsilon or v_prediction, got 'epsilon'\) is for a single-file checkpoint"),
    ("prediction-type-unknown", GEN + ["--model", "afile", "--prediction-type", "sample"],
     r"--prediction-type \(epsilon or v_prediction, got 'sample'\)"),
    ("guidance-method-unknown", GEN + ["--guidance-method", "pag"],
     r"--guidance-method must be one of cfg, apg, cfg_zero_star, cfg_pp, got 'pag'"),
    ("cfg-pp-without-settings", GEN + ["--guidance-method", "cfg_pp"],
     r"--guidance-method cfg_pp needs --sampler \(euler or ddim\) and --guidance LAMBDA in \[0, 1\]"),
    ("cfg-pp-sampler", GEN + ["--guidance-method", "cfg_pp", "--sampler", "deis", "--guidance", "0.5"],
     r"guidance method cfg_pp works with the samplers euler, ddim \(deterministic\), not 'deis'"),
    ("cfg-pp-scale", GEN + ["--guidance-method", "cfg_pp", "--sampler", "euler", "--guidance", "3"],
     r"guidance method cfg_pp takes a guidance scale lambda in \[0, 1\] \(Chung et al. 2024\), got 3.0"),
    ("lora-missing", GEN + ["--lora", "nope.safetensors:0.5"], r"--lora nope.safetensors:0.5: nope.safetensors does "
                                                                 r"not exist"),
    ("video-format-unknown", GEN + ["--video-format", "avi"], r"--video-format must be mp4 or gif, got 'avi'"),
    ("recipe-wav-not-audio", ["generate", "--recipe", "text.wav"], r"cannot read text.wav"),
    ("train-sounds-resolution-32", ["train", "--preset", "sounds", "--resolution", "32", "--out", "fresh"],
     r"resolution is the number of mel bands and must be 64 for sounds, got 32"),
    ("train-lora-without-init-from", ["train", "--preset", "tiny", "--lora-rank", "4", "--out", "fresh"],
     r"lora_rank must be an integer in \[0, 256\], above 0 only with init_from"),
    ("distill-unknown-method", ["distill", "--method", "magic", "--out", "fresh"],
     r"--method must be one of lcm, cd, reflow, got 'magic'"),
    ("distill-teacher-missing", ["distill", "--method", "lcm", "--teacher", "nowhere", "--out", "fresh"],
     r"--teacher: no difflab model package at nowhere"),
    ("distill-couplings-1e9", ["distill", "--method", "reflow", "--couplings", "1000000000", "--out", "fresh"],
     r"couplings must be an integer in \[1, 1000000\]"),
    ("control-image-without-controlnet", GEN + ["--control-image", "x.png"],
     r"--control-image and --control-scale need a --controlnet"),
    ("controlnet-without-image", GEN + ["--controlnet", "empty"], r"give one --control-image per --controlnet \(1\), got 0"),
    ("controlnet-missing", GEN + ["--controlnet", "nowhere", "--control-image", "x.png"],
     r"--controlnet nowhere: not a folder"),
    ("ip-image-without-adapter", GEN + ["--ip-image", "x.png"], r"--ip-image needs an --ip-adapter"),
    ("ip-scale-9", GEN + ["--ip-adapter", "empty", "--ip-image", "x.png", "--ip-scale", "9"],
     r"--ip-scale must be in \[0, 5\], got 9"),
    ("train-controlnet-unknown", ["train", "--preset", "tiny", "--init-from", "shapes", "--controlnet", "depth",
                                  "--out", "fresh"], r"controlnet must be '' or one of \('layout', 'edges'\)"),
    ("train-ip-adapter-digits", ["train", "--dataset", "digits", "--init-from", "shapes", "--ip-adapter", "--out",
                                 "fresh"], r"ip_adapter must be used with init_from and dataset=shapes"),
    ("deep-cache-0", GEN + ["--deep-cache", "0"], r"--deep-cache must be an integer in \[1, 100\], got 0"),
    ("block-cache-2", GEN + ["--block-cache", "2"], r"--block-cache must be a number in \(0, 1\], got 2.0"),
    ("block-cache-on-a-unet", GEN + ["--block-cache", "0.2"], r"block_cache is for difflab's transformers"),
    ("eval-limit-0", ["eval", BUNDLED, "--limit", "0"], r"--limit must be a positive integer"),
    ("eval-steps-1e9", ["eval", BUNDLED, "--steps", "1000000000"], r"sampling steps \(--steps\): 1,000,000,000 asked"),
    ("eval-model-missing", ["eval", "nowhere"], r"MODEL must be a model package folder"),
    # the web app, refused before anything loads (difflab.serve.config)
    ("serve-open-host-no-token", ["serve", "--host", "0.0.0.0"], r"--host 0.0.0.0 lets other machines reach the "
                                                                  r"server: give --token TOKEN \(or --insecure"),
    ("serve-short-token", ["serve", "--token", "abc"], r"--token must be 16 to 512 printable ASCII characters"),
    ("serve-port-70000", ["serve", "--port", "70000"], r"--port must be an integer in \[0, 65535\]"),
    ("serve-queue-0", ["serve", "--queue-size", "0"], r"--queue-size must be an integer >= 1, got 0"),
    ("serve-outputs-a-file", ["serve", "--outputs", "afile"], r"--outputs afile is a file"),
    ("serve-model-missing", ["serve", "--model", "nowhere"], r"nowhere is not a difflab model package"),
    # the parser's own errors
    ("unknown-option", GEN + ["--colour", "red"], r"No such option: --colour.*\(see difflab generate --help\)"),
    ("n-not-a-number", GEN + ["-n", "many"], r"Invalid value for '-n'"),
    ("train-without-out", ["train", "--preset", "tiny"], r"Missing option '--out'"),
    ("unknown-command", ["paint", "a red circle"], r"No such command 'paint'"),
]
