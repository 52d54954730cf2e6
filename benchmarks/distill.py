"""Few-step generation: a teacher at its defaults and at few steps against distilled students (issue 16).

Every row generates the same balanced sample of shapes-bench (same prompts and seeds) and is scored by the
oracle (accuracy per category) and FID on difflab's shapes features, as ``difflab eval`` does. A student
row "at N steps" uses the package's own sampler and guidance (its config.json 'sampling' section). Speed
is timed apart from the eval (which includes the oracle): 16 images of one prompt per call, best of 3,
the rows taking turns in one process so that a busy machine slows them alike. The ratios compare each
row with the teacher at its defaults; the table goes to stdout and, with ``--out``, the reports to JSON.

    python benchmarks/distill.py --teacher shapes --limit 6 --teacher-steps 4 --threads 1   # smoke test
    python benchmarks/distill.py --teacher shapes --students lcm=runs/lcm/model,cm=runs/cm/model \\
        --student-steps 1,2,4,8 --teacher-steps 4,8 --limit 150 --out benchmarks/results/distill.json
    python benchmarks/distill.py --students lcm=runs/lcm/model --speed-only   # images/s only (a minute or two)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

COLUMNS = ("single_object", "two_objects", "counting", "colours", "position", "relation")
SPEED_PROMPT, SPEED_BATCH, SPEED_RUNS = "a red circle above a blue square", 16, 3


def integers(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n]


def students(text: str | None) -> list[tuple[str, str]]:
    """NAME=PATH,... as (name, path); a package that does not exist (yet) is left out with a note."""
    from difflab.settings import BUNDLED_MODELS

    pairs = [item.split("=", 1) for item in (text or "").split(",") if item]
    if any(len(pair) != 2 or not all(pair) for pair in pairs):
        raise SystemExit(f"--students must be NAME=PATH,NAME=PATH..., got {text!r}")
    found = [(name, path) for name, path in pairs if Path(path).is_dir() or path in BUNDLED_MODELS]
    for name, path in pairs:
        if (name, path) not in found:
            print(f"student {name}: no package at {path}, left out", file=sys.stderr)
    return found


def resolve(pipe, steps: int | None) -> dict:
    """The sampler, steps and guidance a row runs with (the package's defaults where not given) and its
    network evaluations per image: classifier-free guidance doubles the batch unless the network embeds it."""
    from difflab.samplers import SAMPLER_INFO

    sampler, scale = pipe.defaults["sampler"], pipe.defaults["guidance_scale"]
    steps = steps or pipe.defaults["steps"]
    embedded = bool(getattr(getattr(pipe.model, "config", None), "guidance_embedding", False))
    evals = SAMPLER_INFO[sampler].evals(steps) * (2 if scale != 1 and not embedded else 1)
    return {"sampler": sampler, "steps": steps, "guidance_scale": scale, "guidance_embedded": embedded,
            "evals_per_image": evals}


def counted_call(pipe, steps: int) -> tuple[float, float]:
    """Seconds of one call making the speed batch, and the network's evaluations per image in it
    (rows of every forward pass, so a doubled CFG batch counts twice)."""
    rows = []
    hook = pipe.model.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    try:
        started = time.perf_counter()
        pipe([SPEED_PROMPT] * SPEED_BATCH, seed=0, steps=steps, sampler=pipe.defaults["sampler"],
             guidance_scale=pipe.defaults["guidance_scale"])
        return time.perf_counter() - started, sum(rows) / SPEED_BATCH
    finally:
        hook.remove()


def measure_speed(rows: list[dict], pipes: dict) -> None:
    """images/s of every row, best of SPEED_RUNS after a warm-up; the rows take turns in each round."""
    for row in rows:
        _, row["measured_evals_per_image"] = counted_call(pipes[row["model"]], row["steps"])
        row["evals_per_image"] = row["measured_evals_per_image"]  # counted: a pure-noise start saves a Heun step's second one
    best = {row["label"]: float("inf") for row in rows}
    for _ in range(SPEED_RUNS):
        for row in rows:
            best[row["label"]] = min(best[row["label"]], counted_call(pipes[row["model"]], row["steps"])[0])
    for row in rows:
        row["images_per_s"] = SPEED_BATCH / best[row["label"]]


def score(rows: list[dict], limit: int) -> None:
    """The shapes-bench report of every row (oracle accuracy per category, FID), one eval each."""
    from difflab.metrics.evaluation import EvalConfig, evaluate

    with tempfile.TemporaryDirectory() as tmp:
        for i, row in enumerate(rows):
            started = time.perf_counter()
            report = evaluate(EvalConfig(row["model"], sampler=None, steps=row["requested_steps"],
                                         guidance_scale=None, limit=limit, out=str(Path(tmp) / f"{i}.json")),
                              progress=False)
            row.update(table=report["table"], distances=report["distances"], settings=report["settings"],
                       eval_seconds=time.perf_counter() - started)
            print(f"{row['label']}: overall {row['table']['overall']['accuracy']:.3f}, "
                  f"FID {row['distances']['fid']:.2f}, {row['eval_seconds']:.0f} s", file=sys.stderr, flush=True)


def straightness(pipe, n: int) -> float:
    """Path straightness S (Liu et al. 2022, eq. 5; difflab.metrics.straightness) of the model's ODE at
    its default guidance, from n seeded noises with the first n captions of shapes' test split."""
    import torch

    from difflab.data import load_dataset
    from difflab.denoisers import Denoiser
    from difflab.guidance import GUIDANCE_METHODS
    from difflab.metrics.straightness import path_straightness

    data = load_dataset("shapes", "test")
    prompts = [data[i]["caption"] for i in range(n)]
    cond, uncond = pipe.conditioner(prompts, pipe.device), pipe.conditioner([pipe.null_condition] * n, pipe.device)
    scale, denoiser = pipe.defaults["guidance_scale"], Denoiser(pipe.model, pipe.schedule, pipe.prediction_type)
    if getattr(pipe.model.config, "guidance_embedding", False):
        cond["guidance"] = torch.full((n,), float(scale))
        x0_of = lambda x, sigma: denoiser(x, sigma, **cond)
    else:
        guided = GUIDANCE_METHODS["cfg"](denoiser, scale)
        x0_of = lambda x, sigma: guided(x, sigma, cond=cond, uncond=uncond if scale != 1 else None)
    z = torch.randn(pipe.codec.model_shape(n, pipe.resolution, pipe.resolution), generator=torch.Generator().manual_seed(0))
    return path_straightness(x0_of, z, steps=50)[0]


def add_ratios(rows: list[dict]) -> None:
    """Score and speed of every row over the teacher's at its defaults (the first row)."""
    teacher = rows[0]
    for row in rows:
        row["speed_ratio"] = row["images_per_s"] / teacher["images_per_s"]
        if "table" in row and teacher["table"]["overall"]["accuracy"] > 0:
            row["score_ratio"] = row["table"]["overall"]["accuracy"] / teacher["table"]["overall"]["accuracy"]


def table_row(row: dict) -> str:
    guidance = f"{row['guidance_scale']:g}" + (" (embedded)" if row["guidance_embedded"] else "")
    cells = [row["label"], row["sampler"], str(row["steps"]), guidance, f"{row['evals_per_image']:g}"]
    if "table" in row:
        table = row["table"]
        cells += [f"**{table['overall']['accuracy']:.3f}**", *(f"{table[c]['accuracy']:.2f}" for c in COLUMNS),
                  f"{row['distances']['fid']:.2f}"]
    else:
        cells += ["-"] * (len(COLUMNS) + 2)
    score_ratio = f"{row['score_ratio']:.2f}" if "score_ratio" in row else "-"
    cells += [f"{row['images_per_s']:.1f}", score_ratio, f"{row['speed_ratio']:.2f}"]
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="shapes", help="a package or a bundled model's name")
    parser.add_argument("--students", help="NAME=PATH,... distilled packages (default: none, teacher rows only)")
    parser.add_argument("--student-steps", type=integers, default=[1, 2, 4, 8])
    parser.add_argument("--teacher-steps", type=integers, default=[4, 8])
    parser.add_argument("--limit", type=int, default=150)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--speed-only", action="store_true", help="time the rows, skip the shapes-bench eval")
    parser.add_argument("--straightness", type=int, default=0, metavar="N",
                        help="also report each model's path straightness on N noises (0: skip)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    import torch

    from difflab import Pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    plan = [(f"{args.teacher} (defaults)", args.teacher, None)]
    plan += [(f"{args.teacher} @ {n}", args.teacher, n) for n in args.teacher_steps]
    plan += [(f"{name} @ {n}", path, n) for name, path in students(args.students) for n in args.student_steps]
    pipes = {model: Pipeline.from_pretrained(model) for model in dict.fromkeys(model for _, model, _ in plan)}
    rows = [{"label": label, "model": model, "requested_steps": steps, **resolve(pipes[model], steps)}
            for label, model, steps in plan]
    measure_speed(rows, pipes)
    if not args.speed_only:
        score(rows, args.limit)
    add_ratios(rows)
    scored = "no eval (--speed-only)" if args.speed_only else f"{args.limit} prompts of shapes-bench"
    print(f"teacher {args.teacher}, {scored}; images/s: {SPEED_BATCH} images of {SPEED_PROMPT!r} per call, "
          f"best of {SPEED_RUNS}, {torch.get_num_threads()} threads on the CPU\n")
    print("| row | sampler | steps | guidance | evals/image | overall | " + " | ".join(COLUMNS)
          + " | FID | images/s | score ratio | speed ratio |")
    print("|---|---|---|---|---|---|" + "---|" * len(COLUMNS) + "---|---|---|---|")
    print("\n".join(table_row(row) for row in rows))
    paths = {model: straightness(pipe, args.straightness) for model, pipe in pipes.items()} if args.straightness else {}
    if paths:
        print(f"\npath straightness S on {args.straightness} noises, 50 Euler steps in flow time (0 = straight)\n")
        print("| model | S |\n|---|---|\n" + "\n".join(f"| {model} | {value:.4f} |" for model, value in paths.items()))
    if args.out:
        args.out.write_text(json.dumps({"teacher": args.teacher, "limit": None if args.speed_only else args.limit,
                                        "threads": torch.get_num_threads(), "speed_batch": SPEED_BATCH,
                                        "speed_prompt": SPEED_PROMPT, "rows": rows, "straightness": paths}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
