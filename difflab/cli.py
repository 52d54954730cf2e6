"""The ``difflab`` command line: ``generate | train | eval | serve | bench | info``.

One error path: every expected failure (a bad argument, a file that cannot be read or written,
difflab's own errors) prints one line ``error: ...`` on stderr and exits with status 2; arguments and
output folders are checked before any model is loaded. An unexpected exception prints one line and
exits with status 1; ``--debug`` shows its traceback. Heavy imports happen inside the commands so
``difflab --help`` is instant.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import click
import typer
import typer.core

from difflab.cli_checks import (check_edit_flags, check_outpaint_canvas, check_settings, one_line, open_image,
                                parse_loras, read_prompts, check_control_flags, check_ip_flags)
from difflab.outputs import COUNTER, check_output_folder, write_file
from difflab.settings import BUNDLED_MODELS, DEFAULT_MODEL, validate_block_cache, validate_deep_cache, validate_guidance_flags
from difflab.train.config import DATASETS, PRESETS
from difflab.train.flags import parse_field_flags, training_fields_help

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="difflab: train, sample, edit and evaluate diffusion models.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: difflab beside the reference libraries.")
app.add_typer(bench_app, name="bench")
DEBUG = {"on": False}
DEV_EXTRA = 'pip install -e ".[dev]"'

# Sampling settings of `generate` and `eval`, declared once; None means the model package's own default.
Sampler = Annotated[str | None, typer.Option(help="one of difflab.SAMPLERS (default: the model's)")]
Steps = Annotated[int | None, typer.Option(help="sampling steps (default: the model's)")]
Guidance = Annotated[float | None, typer.Option(help="classifier-free guidance scale (default: the model's)")]


def fail(message: str) -> None:
    """Print one line to stderr and exit with status 2 (bad usage)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _expected(error: BaseException) -> bool:
    """A failure the user can act on: bad input, an unreadable or unwritable file, difflab's own errors."""
    from PIL import Image
    return isinstance(error, (ValueError, OSError, FloatingPointError, Image.DecompressionBombError)) \
        or type(error).__module__.startswith("difflab.")


def one_line_errors(command):
    """Expected failures -> ``error: ...`` and status 2; anything else -> one line and status 1."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as error:
            if DEBUG["on"]:
                import traceback
                traceback.print_exc()
            if _expected(error):
                fail(one_line(error) or type(error).__name__)
            typer.echo(f"error: unexpected {type(error).__name__}: {one_line(error)} "
                       "(re-run with --debug for the traceback)", err=True)
            raise typer.Exit(code=1)
    return run


@app.callback()
def options(debug: bool = typer.Option(False, "--debug", help="show the traceback of an unexpected error")):
    """difflab: train, sample, edit and evaluate diffusion models."""
    DEBUG["on"] = DEBUG["on"] or debug


def _quiet_loading() -> None:
    """MiniLM loads through transformers, whose "Loading weights" bar is not ours to show."""
    from transformers.utils import logging
    logging.disable_progress_bar()


@app.command()
@one_line_errors
def info(path: str = typer.Argument(None, help="a model package (or a bundled model's name), diffusers folder or "
                                                  ".safetensors file to describe (read from configs and headers; no "
                                                  "weight is loaded)")) -> None:
    """Print versions and the samplers, schedules and devices difflab sees; or what PATH holds."""
    if path is not None:
        from difflab.convert.describe import describe
        for field, value in describe(path):
            typer.echo(f"{field + ':':<18}{value}")
        return
    import torch

    import difflab
    from difflab.schedules import KINDS

    typer.echo(f"difflab {difflab.__version__}, torch {torch.__version__}, "
               f"cuda {'yes' if torch.cuda.is_available() else 'no'}, threads {torch.get_num_threads()}")
    typer.echo("samplers: " + ", ".join(difflab.SAMPLERS))
    typer.echo("schedules: " + ", ".join(KINDS))
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    typer.echo("devices: cpu" + (f", cuda x{cuda} ({torch.cuda.get_device_name(0)})" if cuda else ""))
    typer.echo("bundled models: " + ", ".join(BUNDLED_MODELS) + f" (the default: {DEFAULT_MODEL}; difflab info NAME "
               "describes one)")


# --- train ---------------------------------------------------------------------------------
class TrainCommand(typer.core.TyperCommand):
    """``difflab train --help`` lists every training field, from ``TrainConfig`` and its comments."""

    def format_help(self, ctx, formatter):
        super().format_help(ctx, formatter)
        if typer.core.HAS_RICH and self.rich_markup_mode is not None:
            typer.echo(training_fields_help())  # rich printed the rest already
        else:
            formatter.write(training_fields_help())


@app.command(cls=TrainCommand, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@one_line_errors
def train(
    ctx: typer.Context,
    dataset: str = typer.Option(None, help=" | ".join(DATASETS) + " (folder: with --data-dir)"),
    preset: str = typer.Option(None, help=" | ".join(PRESETS)),
    config: str = typer.Option(None, "--config", help="a TOML file of training fields"),
    out: str = typer.Option(..., help="output folder: checkpoints/, log.csv, model/"),
    resume: bool = typer.Option(False, help="continue from the newest complete checkpoint in --out"),
):
    """Train a model. Every training field is a flag too (listed below): --max-steps 500 --lr 3e-4 ..."""
    from difflab.train import build_config

    overrides = parse_field_flags(ctx.args)
    if dataset is not None:
        overrides["dataset"] = dataset
    _run_training(build_config(preset, config, overrides), out, resume)


def _run_training(cfg, out: str, resume: bool) -> None:
    from difflab.train.checkpoint import check_run_folder
    from difflab.train.config import build_dataset
    check_output_folder(out)
    check_run_folder(Path(out), resume)
    data = build_dataset(cfg)  # a folder's images are checked here, before torch is imported
    _quiet_loading()
    from difflab.train import train as run_training
    path = run_training(cfg, out, resume=resume, dataset=data)  # TrainingStopped is difflab's own: one line, status 2
    if os.environ.get("RANK", "0") == "0":
        typer.echo(f"model package: {path}")


@app.command(cls=TrainCommand, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@one_line_errors
def distill(
    ctx: typer.Context,
    method: str = typer.Option(..., help="lcm (latent consistency, guidance embedded) | cd (consistency "
                                         "distillation) | reflow (rectified flow on teacher couplings)"),
    teacher: str = typer.Option("shapes", help="the teacher: a model package or a bundled model's name"),
    out: str = typer.Option(..., help="output folder: checkpoints/, log.csv, model/ (the student package)"),
    resume: bool = typer.Option(False, help="continue from the newest complete checkpoint in --out"),
):
    """Distil a few-step student from a teacher (same loop, checkpoints and resume as train). Training
    fields are flags too: --max-steps 1000 --lora-rank 16 (an LCM-LoRA) --couplings 2048 ..."""
    from difflab.train.distill import distill_config
    _run_training(distill_config(method, teacher, parse_field_flags(ctx.args)), out, resume)


# --- generate -------------------------------------------------------------------------------
@app.command()
@one_line_errors
def generate(
    prompt: str = typer.Argument(None, help="what to draw (for digits models: a class label)"),
    n: int = typer.Option(1, "-n", "--num-images", help="images per prompt"),
    prompts: str = typer.Option(None, help="a text file of prompts, one a line (# comments); image i gets seed + i; "
                                           "under torchrun each process takes its share"),
    seed: int = typer.Option(None, help="first seed (image i uses seed + i); random if omitted"),
    steps: Steps = None,
    sampler: Sampler = None,
    guidance: Guidance = None,
    negative: str = typer.Option(None, help="negative prompt"),
    guidance_method: str = typer.Option("cfg", help="cfg | apg (adaptive projected) | cfg_zero_star | cfg_pp (CFG++: --sampler euler or ddim, --guidance in [0, 1])"),
    lora: list[str] = typer.Option(None, help="a LoRA file PATH[:SCALE] for an SD model or a difflab UNet (repeatable)"),
    deep_cache: int = typer.Option(None, help="difflab UNets: recompute deep features every N-th step (DeepCache; "
                                              "2: ~1.7x faster)"),
    block_cache: float = typer.Option(None, help="DiT/MMDiT: skip the blocks after the first while its output "
                                                 "changes by less than this fraction (first-block cache; 0-1)"),
    spacing: str = typer.Option(None, help="sigma spacing: trailing, leading, linspace, karras, exponential"),
    model: str = typer.Option(None, help="a difflab package, a diffusers folder (SD 1.x/2.x, SDXL, SD3) or a single "
                                         ".safetensors checkpoint (SD 1.x/2.x, SDXL); default: the bundled model"),
    out: str = typer.Option("outputs", help="folder for the PNGs"),
    overwrite: bool = typer.Option(False, help="replace files of the same name in --out (never a link or an "
                                                "input); by default a taken name gets a counter prefix"),
    grid: bool = typer.Option(False, help="also write a grid of all images"),
    video_format: str = typer.Option("mp4", help="a video model's files: mp4 or gif"),
    recipe: str = typer.Option(None, help="replay the recipe stored in a PNG, MP4, GIF or WAV written by difflab"),
    image: str = typer.Option(None, help="input image to edit (image-to-image, inpainting, outpainting)"),
    strength: float = typer.Option(None, help="image-to-image: noise level to start from, as a fraction of the schedule (0..1; SDEdit)"),
    mask: str = typer.Option(None, help="inpainting mask image: white = regenerate"),
    outpaint: str = typer.Option(None, help="outpainting: pixels to add as LEFT,RIGHT,TOP,BOTTOM"),
    mask_blur: float = typer.Option(0.0, help="feather the inpainting seam (pixels, inside the mask)"),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1, mps ... (default: cpu)"),
    dtype: str = typer.Option(None, help="float32 (default), float16 or bfloat16 (GPUs), float64"),
    prediction_type: str = typer.Option(None, help="single-file SD 2.x: v_prediction (768 px, the default) or "
                                                   "epsilon (2.0/2.1-base, 512 px); no key in the file says which"),
    controlnet: list[str] = typer.Option(None, help="a ControlNet (difflab package or diffusers folder); repeatable"),
    control_image: list[str] = typer.Option(None, help="each --controlnet's control image, in order"),
    control_scale: list[float] = typer.Option(None, help="one scale for all ControlNets, or one each [default: 1]"),
    control_start: float = typer.Option(0.0, help="ControlNets act from this fraction of the way to clean (0..1)"),
    control_end: float = typer.Option(1.0, help="... up to this fraction (0..1)"),
    ip_adapter: str = typer.Option(None, help="an IP-Adapter package (difflab train --ip-adapter), a bundled "
                                              "one, or an official .safetensors file; with --ip-image"),
    ip_image: str = typer.Option(None, help="the image prompt (the text may then be empty: \"\")"),
    ip_scale: float | None = typer.Option(None, help="the image prompt's weight (0..5; default: the adapter's)"),
):
    """Generate images (a video model: MP4 or GIF clips; an audio model: WAV); each file carries the recipe that replays it."""
    from difflab.pipelines.recipes import adapters_base, bundled_model_with_weights, read_recipe  # torch: after flags
    from difflab.settings import package_folder

    if recipe is None and prompt is None and prompts is None:
        fail("give a PROMPT, --prompts FILE or --recipe IMAGE.png")
    if prompts is not None and (prompt or recipe or image or grid):
        raise ValueError("--prompts FILE generates from the file alone: drop PROMPT, --recipe, --image and --grid")
    check_settings(prompt, negative, n, steps, sampler, spacing, guidance)
    validate_guidance_flags(guidance_method, sampler, guidance)
    validate_deep_cache(deep_cache, "--deep-cache")
    validate_block_cache(block_cache, "--block-cache")
    if video_format not in ("mp4", "gif"):
        raise ValueError(f"--video-format must be mp4 or gif, got {video_format!r}")
    if dtype is not None and dtype.removeprefix("torch.") not in ("float32", "float16", "bfloat16", "float64"):
        raise ValueError(f"--dtype must be float32, float16, bfloat16 or float64, got {dtype!r}")
    if prediction_type is not None and (prediction_type not in ("epsilon", "v_prediction")
                                        or model is None or not Path(model).expanduser().is_file()):
        raise ValueError(f"--prediction-type (epsilon or v_prediction, got {prediction_type!r}) is for a single-file "
                         "checkpoint given as --model FILE.safetensors; folders and packages say it themselves")
    loras = parse_loras(lora)
    controls = check_control_flags(controlnet, control_image, control_scale, control_start, control_end)
    controls |= check_ip_flags(ip_adapter, ip_image, ip_scale)
    jobs = read_prompts(prompts, n, seed) if prompts is not None else None
    margins = check_edit_flags(image, strength, mask, outpaint, mask_blur)
    edits = {"image": open_image(image, "--image"), "mask": open_image(mask, "--mask")}
    if edits["mask"] is not None and edits["mask"].size != edits["image"].size:
        raise ValueError(f"--mask is {edits['mask'].size[0]}x{edits['mask'].size[1]} but --image is "
                         f"{edits['image'].size[0]}x{edits['image'].size[1]}; they must match")
    if margins is not None:
        check_outpaint_canvas(edits["image"].size, margins)
    replay = read_recipe(recipe) if recipe is not None else None
    if replay is not None and model is None:   # a recipe made with a bundled model replays on that one
        model = bundled_model_with_weights(replay.get("weights"))
    if model is None:          # a bundled adapter (or LoRA) named alone runs on the model it was made for
        model = adapters_base(controlnet, ip_adapter, [path for path, _ in loras])
    if model is not None:
        package_folder(model)
    check_output_folder(out)
    _quiet_loading()
    from difflab.pipelines import Pipeline
    pipe = Pipeline.from_pretrained(model, prediction_type=prediction_type, controlnet=controlnet or None,
                                    ip_adapter=ip_adapter)
    for path, scale in loras:
        pipe.load_lora(path, scale)
    pipe.to(device, dtype)
    if jobs is not None:
        paths = []
        for start in range(0, len(jobs), 8):                           # eight images per batch
            batch = jobs[start:start + 8]
            result = pipe([p for p, _ in batch], negative_prompt=negative, seed=[s for _, s in batch], steps=steps,
                          sampler=sampler, guidance_scale=guidance, spacing=spacing, progress=True,
                          guidance_method=guidance_method, deep_cache=deep_cache, block_cache=block_cache, **controls)
            paths += result.save(out, overwrite=overwrite, video_format=video_format)
        for path in paths:
            typer.echo(str(path))
        return
    if replay is not None:
        result = pipe.replay(replay, **edits, control_image=controls.get("control_image"),
                             ip_image=controls.get("ip_image"))
    else:
        result = pipe(prompt, negative_prompt=negative, num_images=n, seed=seed, steps=steps, sampler=sampler,
                      guidance_scale=guidance, spacing=spacing, progress=True, strength=strength,
                      guidance_method=guidance_method, deep_cache=deep_cache, block_cache=block_cache,
                      outpaint=margins, mask_blur=mask_blur, **edits, **controls)
    inputs = [p for p in (image, mask, recipe, ip_image, *(control_image or [])) if p is not None]
    paths = result.save(out, overwrite=overwrite, inputs=inputs, video_format=video_format)
    if grid:
        canvas = result.grid()
        counter = COUNTER.match(paths[0].name)  # the grid takes its images' counter prefix, if any
        name = f"{counter.group(1)}-grid.png" if counter else "grid.png"
        paths.append(write_file(Path(out) / name, lambda f: canvas.save(f, format="PNG"), overwrite, inputs))
    for path in paths:
        typer.echo(str(path))


# --- bench commands -------------------------------------------------------------------------
def _benchmark(name: str, *requires: str):
    """The benchmark script ``benchmarks/NAME.py`` of the source checkout, after checking its packages."""
    import importlib
    import importlib.util

    for package in requires:
        try:
            importlib.import_module(package)
        except ImportError:
            fail(f"difflab bench {name} needs {package}, from the [dev] extra: {DEV_EXTRA}")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    if not script.is_file():
        fail(f"{script} not found: the benchmarks live in difflab's source checkout (git clone, pip install -e .)")
    spec = importlib.util.spec_from_file_location(f"difflab_bench_{name}", script)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@bench_app.command("samplers")
@one_line_errors
def bench_samplers(
    quick: bool = typer.Option(False, "--quick", help="Fewer NFEs, Gaussian data, VP and flow only (< 1 min)."),
    out: str = typer.Option("outputs/bench", "--out", help="Folder for samplers.md/.json/.png (the tracked "
                                                            "results: --out benchmarks/results)."),
) -> None:
    """Sampler error against NFE on exact Gaussian problems and per-step overhead, beside diffusers."""
    check_output_folder(out)
    module = _benchmark("samplers", "diffusers", "scipy", "matplotlib")
    module.main(quick=quick, out=out, log=typer.echo)


@bench_app.command("networks")
@one_line_errors
def bench_networks(
    rounds: int = typer.Option(7, "--rounds", help="Alternating rounds; medians are reported."),
    configs: str = typer.Option("small,medium", "--configs", help="Comma list of: small (16x16x1), medium (32x32x3)."),
) -> None:
    """difflab's UNet beside diffusers' UNet2DModel on CPU: train and forward img/s, FLOPs, % of peak."""
    unknown = sorted(set(configs.split(",")) - {"small", "medium"})
    if unknown or rounds < 1:
        fail(f"--configs must be a comma list of small, medium (got {unknown}) and --rounds >= 1 (got {rounds})")
    module = _benchmark("networks", "diffusers")
    module.main(["--rounds", str(rounds), "--configs", configs])


# --- eval command ---------------------------------------------------------------------------
@app.command("eval")
@one_line_errors
def eval_(
    model: str = typer.Argument(..., help="model package folder"),
    prompts: str = typer.Option("shapes-bench", help="shapes-bench, or a text file of canonical shapes prompts; "
                                                     "a video or audio model: held-out or test (default: both)"),
    sampler: Sampler = None,
    steps: Steps = None,
    guidance: Guidance = None,
    limit: int = typer.Option(None, help="score a balanced sample of N prompts (round-robin over categories); "
                                         "a video or audio model: N prompts per set (default 48)"),
    batch_size: int = typer.Option(16, help="images generated per batch"),
    fid: bool = typer.Option(True, help="also compute FID/KID against real renders"),
    out: str = typer.Option(None, help="JSON report path (default: outputs/eval/eval-MODEL-PROMPTS-LIMIT-HASH.json;"
                                       " a taken name gets a counter prefix)"),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N | mps: where the images are generated"),
    guidance_method: str = typer.Option("cfg", help="cfg | apg | cfg_zero_star | cfg_pp (needs --sampler euler|ddim and --guidance in [0, 1])"),
    deep_cache: int = typer.Option(None, help="difflab UNets: recompute deep features every N-th step"),
    lora: list[str] = typer.Option(None, help="a LoRA file PATH[:SCALE] loaded before generating (repeatable)"),
    oracle_colours: str = typer.Option("trained", help="trained: the oracle names the six trained colours (and a "
                                                       "novel one a prompt names) | all: every colour it can be "
                                                       "taught (cyan too), the strict reading after a colour LoRA"),
    seeds: int = typer.Option(1, help="each prompt under N seeds (its own, then +100000, ...): ~1/sqrt(N) the "
                                      "noise of one seed a prompt; image prompt sets"),
) -> None:
    """Generate the prompt set, score it with the shapes oracle and FID/KID (a video or audio model: its
    world's judge and FD/KID on difflab's clip or sound features); print a table, write JSON."""
    from difflab.metrics.evaluation import EvalConfig, evaluate, format_summary

    config = EvalConfig(model, prompts, sampler, steps, guidance, batch_size, limit, fid, out, device, guidance_method,
                        deep_cache, tuple(parse_loras(lora)), oracle_colours, seeds)
    config.validate()
    _quiet_loading()
    typer.echo(format_summary(evaluate(config)))


# --- serve command --------------------------------------------------------------------------
@app.command()
@one_line_errors
def serve(
    host: str = typer.Option("127.0.0.1", help="address to bind; anything but loopback needs --token or --insecure"),
    port: int = typer.Option(7860, help="port (0: any free port)"),
    token: str = typer.Option(None, envvar="DIFFLAB_TOKEN", help="require 'Authorization: Bearer TOKEN' "
                                                                 "(the browser logs in once); or set DIFFLAB_TOKEN"),
    insecure: bool = typer.Option(False, help="allow a non-loopback --host without a token (anyone who can reach "
                                              "it can use it)"),
    outputs: str = typer.Option("outputs/serve", help="folder for results, uploads and the job history"),
    model: list[str] = typer.Option(None, help="a model package folder to offer (repeatable; default: the "
                                               "bundled model)"),
    queue_size: int = typer.Option(32, help="jobs that may wait; more are refused with 429"),
    job_timeout: float = typer.Option(600.0, help="seconds one job may run"),
    allowed_host: list[str] = typer.Option(None, help="another Host name to accept without a token (repeatable)"),
) -> None:
    """The web app: a browser UI and a REST API (docs at /docs) with a job queue that survives restarts."""
    from difflab.serve import ServeConfig

    config = ServeConfig(outputs=Path(outputs), models=list(model) if model else [None], host=host, port=port,
                         token=token, insecure=insecure, queue_size=queue_size, job_timeout=job_timeout,
                         allowed_hosts=list(allowed_host or [])).validate()
    if insecure and token is None:
        warnings.warn(f"serving on {host} without a token: anyone who can reach this address can use the server")
    _quiet_loading()
    from difflab.serve import run
    run(config, log=typer.echo)


def main() -> None:
    """The ``difflab`` entry point: ``--debug`` may stand anywhere; warnings print as one line each."""
    args = sys.argv[1:]
    if "--debug" in args:
        DEBUG["on"] = True
        args = [a for a in args if a != "--debug"]
    warnings.formatwarning = lambda message, category, *rest, **kw: f"warning: {one_line(message)}\n"
    try:
        code = app(args=args, prog_name="difflab", standalone_mode=False)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        code = 1
    except Exception as error:
        code = _usage_error(error)
        if code is None:
            raise
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error(error: Exception) -> int | None:
    """A usage error of the command-line parser (an unknown option, a missing argument) as one line;
    None for any other exception. Typer's parser errors are recognised by their interface
    (``format_message``, ``exit_code``): typer may bring click inside itself or use the click package."""
    if not (callable(getattr(error, "format_message", None)) and isinstance(getattr(error, "exit_code", None), int)):
        return None
    ctx = getattr(error, "ctx", None)
    if type(error).__name__ == "NoArgsIsHelpError":  # bare `difflab` or a group: the help, already printed
        return 0
    where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
    typer.echo(f"error: {one_line(error.format_message())}{where}", err=True)
    return error.exit_code
