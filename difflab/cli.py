"""The ``difflab`` command line: ``generate | train | eval | bench | info``.

Each command validates its arguments first and prints one clear line on bad input (exit code 2),
never a traceback. Heavy imports happen inside the commands so ``difflab --help`` is instant.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="difflab: train, sample, edit and evaluate diffusion models.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: difflab beside the reference libraries.")
app.add_typer(bench_app, name="bench")

# Sampling settings of `generate` and `eval`, declared once; None means the model package's own default.
Sampler = Annotated[str | None, typer.Option(help="one of difflab.SAMPLERS (default: the model's)")]
Steps = Annotated[int | None, typer.Option(help="sampling steps (default: the model's)")]
Guidance = Annotated[float | None, typer.Option(help="classifier-free guidance scale (default: the model's)")]


def fail(message: str) -> None:
    """Print one line to stderr and exit with status 2 (bad usage)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@app.command()
def info() -> None:
    """Print versions and the samplers, schedules and devices difflab sees."""
    import torch

    import difflab
    from difflab.schedules import KINDS

    typer.echo(f"difflab {difflab.__version__}, torch {torch.__version__}, "
               f"cuda {'yes' if torch.cuda.is_available() else 'no'}, threads {torch.get_num_threads()}")
    typer.echo("samplers: " + ", ".join(difflab.SAMPLERS))
    typer.echo("schedules: " + ", ".join(KINDS))
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    typer.echo("devices: cpu" + (f", cuda x{cuda} ({torch.cuda.get_device_name(0)})" if cuda else ""))


# --- train and generate -------------------------------------------------------------------
@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    dataset: str = typer.Option(None, help="shapes | digits | folder"),
    preset: str = typer.Option(None, help="tiny | shapes-quick | shapes | digits"),
    config: str = typer.Option(None, "--config", help="a TOML file of training fields"),
    out: str = typer.Option(..., help="output folder: checkpoints/, log.csv, model/"),
    resume: bool = typer.Option(False, help="continue from the newest complete checkpoint in --out"),
):
    """Train a model. Every training field is a flag too: --max-steps 500 --batch-size 32 --lr 3e-4 ..."""
    from difflab.train import TrainingStopped, build_config, train as run_training

    try:
        overrides = _parse_field_flags(ctx.args)
        if dataset is not None:
            overrides["dataset"] = dataset
        cfg = build_config(preset, config, overrides)
    except ValueError as error:
        fail(str(error))
    try:
        path = run_training(cfg, out, resume=resume)
    except TrainingStopped as error:
        fail(str(error))
    except ValueError as error:
        fail(str(error))
    if os.environ.get("RANK", "0") == "0":
        typer.echo(f"model package: {path}")


def _parse_field_flags(args: list[str]) -> dict:
    """``--max-steps 500 --ema-warmup false`` -> {"max_steps": 500, "ema_warmup": False} with field types."""
    import dataclasses

    from difflab.train import TrainConfig

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    values, i = {}, 0
    while i < len(args):
        flag = args[i]
        name = flag[2:].replace("-", "_") if flag.startswith("--") else None
        if name not in fields or name == "model":
            raise ValueError(f"unknown option {flag!r}; training fields: "
                             + ", ".join("--" + n.replace("_", "-") for n in fields if n != "model"))
        if i + 1 >= len(args):
            raise ValueError(f"option {flag} needs a value")
        values[name] = _convert(args[i + 1], fields[name].default, flag)
        i += 2
    return values


def _convert(text: str, default, flag: str):
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise ValueError(f"option {flag} expects a {type(default).__name__}, got {text!r}") from None
    return text


@app.command()
def generate(
    prompt: str = typer.Argument(None, help="what to draw (for digits models: a class label)"),
    n: int = typer.Option(1, "-n", "--num-images", help="images per prompt"),
    seed: int = typer.Option(None, help="first seed (image i uses seed + i); random if omitted"),
    steps: Steps = None,
    sampler: Sampler = None,
    guidance: Guidance = None,
    negative: str = typer.Option(None, help="negative prompt"),
    spacing: str = typer.Option(None, help="sigma spacing: trailing, leading, linspace, karras, exponential"),
    model: str = typer.Option(None, help="a model package folder (default: the bundled model)"),
    out: str = typer.Option("outputs", help="folder for the PNGs"),
    grid: bool = typer.Option(False, help="also write a grid of all images"),
    recipe: str = typer.Option(None, help="replay the recipe stored in a PNG written by difflab"),
    image: str = typer.Option(None, help="input image to edit (image-to-image, inpainting, outpainting)"),
    strength: float = typer.Option(None, help="image-to-image: fraction of the steps that run (0..1)"),
    mask: str = typer.Option(None, help="inpainting mask image: white = regenerate"),
    outpaint: str = typer.Option(None, help="outpainting: pixels to add as LEFT,RIGHT,TOP,BOTTOM"),
    mask_blur: float = typer.Option(0.0, help="feather the inpainting seam (pixels, inside the mask)"),
):
    """Generate images; each PNG carries the recipe that replays it."""
    from difflab.pipelines import Pipeline, read_recipe

    try:
        edits = {"image": _open_image(image, "--image"), "mask": _open_image(mask, "--mask")}
        if recipe is not None:
            replay = read_recipe(recipe)
            pipe = Pipeline.from_pretrained(model)
            result = pipe.replay(replay, **edits)
        else:
            if not prompt:
                fail("give a PROMPT, or --recipe IMAGE.png")
            pipe = Pipeline.from_pretrained(model)
            result = pipe(prompt, negative_prompt=negative, num_images=n, seed=seed, steps=steps, sampler=sampler,
                          guidance_scale=guidance, spacing=spacing, progress=True, strength=strength,
                          outpaint=_parse_outpaint(outpaint), mask_blur=mask_blur, **edits)
    except (ValueError, FileNotFoundError, FloatingPointError) as error:
        fail(str(error))
    paths = result.save(out)
    if grid:
        result.grid().save(Path(out) / "grid.png")
    for path in paths:
        typer.echo(str(path))


def _open_image(path: str | None, flag: str):
    if path is None:
        return None
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"{flag} {path}: cannot read it as an image ({error})") from None


def _parse_outpaint(text: str | None):
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ValueError(f"--outpaint takes four integers LEFT,RIGHT,TOP,BOTTOM, got {text!r}")
    return tuple(values)


# --- bench commands -------------------------------------------------------------------------
@bench_app.command("samplers")
def bench_samplers(
    quick: bool = typer.Option(False, "--quick", help="Fewer NFEs, Gaussian data, VP and flow only (< 1 min)."),
    out: str = typer.Option(None, "--out", help="Folder for samplers.md/.json/.png (default: benchmarks/results)."),
) -> None:
    """Sampler error against NFE on exact Gaussian problems and per-step overhead, beside diffusers."""
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "samplers.py"
    if not script.is_file():
        fail(f"{script} not found: the benchmarks live in difflab's source checkout (git clone, pip install -e .)")
    spec = importlib.util.spec_from_file_location("difflab_bench_samplers", script)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(module)
    module.main(quick=quick, out=out, log=typer.echo)


@bench_app.command("networks")
def bench_networks(
    rounds: int = typer.Option(7, "--rounds", help="Alternating rounds; medians are reported."),
    configs: str = typer.Option("small,medium", "--configs", help="Comma list of: small (16x16x1), medium (32x32x3)."),
) -> None:
    """difflab's UNet beside diffusers' UNet2DModel on CPU: train and forward img/s, FLOPs, % of peak."""
    import importlib.util
    from pathlib import Path

    unknown = sorted(set(configs.split(",")) - {"small", "medium"})
    if unknown or rounds < 1:
        fail(f"--configs must be a comma list of small, medium (got {unknown}) and --rounds >= 1 (got {rounds})")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "networks.py"
    if not script.is_file():
        fail(f"{script} not found: the benchmarks live in difflab's source checkout (git clone, pip install -e .)")
    spec = importlib.util.spec_from_file_location("difflab_bench_networks", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--rounds", str(rounds), "--configs", configs])


# --- eval command ---------------------------------------------------------------------------
@app.command("eval")
def eval_(
    model: str = typer.Argument(..., help="model package folder"),
    prompts: str = typer.Option("shapes-bench", help="shapes-bench, or a text file of canonical shapes prompts"),
    sampler: Sampler = None,
    steps: Steps = None,
    guidance: Guidance = None,
    limit: int = typer.Option(None, help="score only the first N prompts"),
    batch_size: int = typer.Option(16, help="images generated per batch"),
    fid: bool = typer.Option(True, help="also compute FID/KID against real renders"),
    out: str = typer.Option(None, help="JSON report path (default: eval-MODEL-PROMPTS.json)"),
) -> None:
    """Generate the prompt set, score it with the shapes oracle and FID/KID; print a table, write JSON."""
    from difflab.metrics.evaluation import EvalConfig, evaluate, format_summary

    config = EvalConfig(model, prompts, sampler, steps, guidance, batch_size, limit, fid, out)
    try:
        config.validate()
        summary = evaluate(config)
    except (ValueError, FileNotFoundError) as error:
        fail(str(error).splitlines()[0])
    typer.echo(format_summary(summary))


def main() -> None:
    app()
