"""Does a video model read the direction word? Its loss with the true caption against the flipped one.

    python benchmarks/motion_probe.py --model shapes-video [--n 64] [--t 950,800,600,400]
    python benchmarks/motion_probe.py --model shapes --flip relation --data-gap   # an image model

For the first ``n`` single-object "moving" clips of the moving-shapes test split, each noised once per
timestep (the same noise for both captions), the v-prediction loss with the clip's own prompt and
with its direction flipped (right <-> left, up <-> down). The gap (flipped - true) / true is 0 for a
model blind to the direction word and grows as it reads it; per timestep, and the fraction of
clips whose true caption has the lower loss. Seconds, not the minutes of sampling and judging
(``benchmarks/av_models.py``), so it can follow a run.

``--flip relation`` asks the same of an image model of the shapes world: real renders of shapes-bench's
relation prompts ("X above Y", each with its bench seed), against the prompt with the relation turned
around ("X below Y"), which the same image contradicts; ``--flip position`` moves a placed object to
the opposite cell ("in the top left" -> "in the bottom right"). ``--flip colours`` asks about binding:
shapes-bench's two-object prompts of two colours and two shapes ("a red circle and a blue square")
against the same objects with their colours traded ("a blue circle and a red square"): the same colours
and shapes, bound the other way. ``--data-gap`` adds the gap of the best prediction from the caption
alone at pure noise: the mean of renders of each caption (other seeds), so the model's gap at the
noisiest steps can be read against what the data offers.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import torch

import difflab

FLIP = {"right": "left", "left": "right", "up": "down", "down": "up"}
RELATION_FLIP = {"above": "below", "below": "above", "to the left of": "to the right of",
                 "to the right of": "to the left of"}


def _flipped(prompt: str, flip: str) -> str | None:
    """The prompt with its relation turned, or its placed object moved to the opposite cell (None: no flip)."""
    from difflab.data.shapes_grammar import POSITIONS, format_prompt, parse_prompt
    if flip == "colours":                                     # two objects: each takes the other's colour
        parsed = parse_prompt(prompt)
        first, second = parsed.objects
        if first.colour == second.colour or first.shape == second.shape or parsed.background:
            return None
        swapped = (dataclasses.replace(first, colour=second.colour), dataclasses.replace(second, colour=first.colour))
        return format_prompt(dataclasses.replace(parsed, objects=swapped))
    if flip in ("relation", "order"):
        relation = parse_prompt(prompt).relation
        if prompt.endswith(" background"):                    # shapes-bench's relations have none
            return None
        if flip == "order":                                   # the objects swapped, the same relation word
            first, second = prompt.split(f" {relation} ")
            return f"{second} {relation} {first}"
        return prompt.replace(f" {relation} ", f" {RELATION_FLIP[relation]} ")
    opposite = {cell: phrase for phrase, cell in POSITIONS.items()}
    for phrase, (row, col) in POSITIONS.items():
        if prompt.endswith(" " + phrase) and (row, col) != (1, 1):
            return prompt[: -len(phrase)] + opposite[(2 - row, 2 - col)]
    return None


def probe_images(n: int, resolution: int, flip: str, word: str | None = None) -> list[tuple[torch.Tensor, str, str]]:
    """(image [3, H, W] in [-1, 1], prompt, flipped prompt) for shapes-bench's relation, position or
    two-object prompts; ``word``: only relation prompts with that relation; with a word or ``colours``,
    topped up to ``n`` with canonical prompts of two random objects (seeds from 50,000 on, a fixed draw)."""
    import random

    from difflab.data.shapes import render
    from difflab.data.shapes_grammar import COLOURS, SHAPES, ObjectSpec, format_object
    from difflab.metrics.bench import bench_prompts
    out = []
    category = {"order": "relation", "colours": "two_objects"}.get(flip, flip)
    for entry in [e for e in bench_prompts() if e["category"] == category]:
        flipped = _flipped(entry["prompt"], flip)
        if flipped is not None and len(out) < n and (word is None or f" {word} " in entry["prompt"]):
            out.append((_tensor(render(entry["prompt"], entry["seed"], resolution)), entry["prompt"], flipped))
    rng, objects = random.Random(3), [ObjectSpec(s, c) for c in COLOURS for s in SHAPES]
    while (word is not None or flip == "colours") and len(out) < n:
        first, second = rng.sample(objects, 2)
        prompt = f"{format_object(first, False)} {word or 'and'} {format_object(second, False)}"
        flipped = _flipped(prompt, flip)
        if flipped is not None:
            out.append((_tensor(render(prompt, 50_000 + len(out), resolution)), prompt, flipped))
    return out


def _tensor(image) -> torch.Tensor:
    import numpy as np
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 127.5 - 1


def data_gap(items, resolution: int, renders: int = 64) -> tuple[float, float]:
    """Gap and true-lower fraction of the caption-only predictor: each caption's mean render (seeds from
    10,000 on, apart from the bench's), scored by squared error on the probe images."""
    from difflab.data.shapes import render

    def mean(prompt):
        return torch.stack([_tensor(render(prompt, 10_000 + s, resolution)) for s in range(renders)]).mean(0)

    errors = torch.tensor([[(x - mean(p)).pow(2).mean() for p in (true, flipped)] for x, true, flipped in items])
    return float(((errors[:, 1] - errors[:, 0]) / errors[:, 0]).mean()), float((errors[:, 0] < errors[:, 1]).float().mean())


def probe_clips(n: int) -> list[tuple[torch.Tensor, str, str]]:
    """(clip [3, T, H, W] in [-1, 1], prompt, flipped prompt) for the first n single moving objects."""
    from difflab.data.moving_shapes import MovingShapesDataset
    from difflab.data.moving_shapes_grammar import parse_motion
    test, out, i = MovingShapesDataset("test"), [], 0
    while len(out) < n and i < len(test):
        clip, _ = test.clip(i)
        i += 1
        p = parse_motion(clip.prompt)
        if p.kind != "move" or " moving " not in clip.prompt:
            continue
        video = torch.from_numpy(test[i - 1]["video"]).permute(3, 0, 1, 2).float() / 127.5 - 1
        out.append((video, clip.prompt, clip.prompt.replace(f" moving {p.direction}", f" moving {FLIP[p.direction]}")))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--t", default="950,800,600,400", help="model timesteps, comma-separated")
    parser.add_argument("--flip", default="direction",
                        choices=("direction", "relation", "order", "position", "colours"),
                        help="direction: a video model's motion word; relation, position: an image model's; "
                             "order: the two objects of a relation prompt swapped; colours: the two objects "
                             "of a two-object prompt trade colours (binding)")
    parser.add_argument("--data-gap", action="store_true", help="image flips: add the caption-only predictor's gap")
    parser.add_argument("--relation-word", choices=tuple(RELATION_FLIP), help="relation/order: only this relation")
    parser.add_argument("--weights", help="a training checkpoint's ema.safetensors for --model's network (follow a run)")
    args = parser.parse_args(argv)
    if args.n < 1:
        raise SystemExit(f"--n must be at least 1, got {args.n}")
    if args.relation_word and args.flip not in ("relation", "order"):
        raise SystemExit(f"--relation-word goes with --flip relation or order, not {args.flip}")
    if args.data_gap and args.flip == "direction":
        raise SystemExit("--data-gap is for the image flips (relation, order, position)")
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    pipe = difflab.Pipeline.from_pretrained(args.model)
    if args.weights:
        from safetensors.torch import load_file
        weights = load_file(args.weights)
        layers = len({k.split(".")[2] for k in weights if k.startswith("context_refiner.blocks.")})
        if layers != getattr(pipe.model.config, "context_layers", 0):   # a run that grew a context refiner
            pipe.model = type(pipe.model)(config=dataclasses.replace(pipe.model.config, context_layers=layers))
        pipe.model.load_state_dict(weights, strict=True)
    model, schedule = pipe.model.eval(), pipe.schedule
    clips = probe_clips(args.n) if args.flip == "direction" else probe_images(args.n, pipe.resolution, args.flip, args.relation_word)
    x0 = torch.stack([c for c, _, _ in clips])
    cond = [pipe.conditioner([c[k] for c in clips], "cpu") for k in (1, 2)]
    generator = torch.Generator().manual_seed(0)
    flag = (f" --flip {args.flip}" if args.flip != "direction" else "") + (
        f" --relation-word '{args.relation_word}'" if args.relation_word else "")
    print(f"`python benchmarks/motion_probe.py --model {args.model}{flag} --n {len(clips)} --t {args.t}`\n")
    print("| t | loss, true caption | loss, flipped | gap | true caption lower |")
    print("|---|---|---|---|---|")
    for t in (float(v) for v in args.t.split(",")):
        tt = torch.full((len(clips),), t)
        alpha, sigma = (v.float().view(-1, *[1] * (x0.ndim - 1)) for v in schedule.alpha_sigma(schedule.sigma(tt)))
        noise = torch.randn(x0.shape, generator=generator)
        xt, target = alpha * x0 + sigma * noise, alpha * noise - sigma * x0          # v (Salimans & Ho 2022)
        losses = []
        with torch.no_grad():
            for c in cond:
                v = model(xt, tt, context=c["context"], context_mask=c["context_mask"], pooled=c["pooled"])
                losses.append((v - target).pow(2).flatten(1).mean(1))
        true, flipped = losses
        print(f"| {t:.0f} | {true.mean():.5f} | {flipped.mean():.5f} | {((flipped - true) / true).mean():+.4f} "
              f"| {(true < flipped).float().mean():.2f} |")
    if args.data_gap and args.flip != "direction":
        gap, lower = data_gap(clips, pipe.resolution)
        print(f"| data: each caption's mean render | | | {gap:+.4f} | {lower:.2f} |")


if __name__ == "__main__":
    main()
