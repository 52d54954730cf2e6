"""Does a video model read the direction word? Its loss with the true caption against the flipped one.

    python benchmarks/motion_probe.py --model shapes-video [--n 64] [--t 950,800,600,400]
    python benchmarks/motion_probe.py --model shapes --relation     # an image model: the relation word

For the first ``n`` single-object "moving" clips of the moving-shapes test split, each noised once per
timestep (the same noise for both captions), the v-prediction loss with the clip's own prompt and
with its direction flipped (right <-> left, up <-> down). The gap (flipped - true) / true is 0 for a
model blind to the direction word and grows as it reads it; per timestep, and the fraction of
clips whose true caption has the lower loss. Seconds, not the minutes of sampling and judging
(``benchmarks/av_models.py``), so it can follow a run.

``--relation`` asks the same of an image model of the shapes world: real renders of shapes-bench's
relation prompts ("X above Y", each with its bench seed), against the prompt with the relation turned
around ("X below Y"), which the same image contradicts.
"""

from __future__ import annotations

import argparse
import os

import torch

import difflab

FLIP = {"right": "left", "left": "right", "up": "down", "down": "up"}
RELATION_FLIP = {"above": "below", "below": "above", "to the left of": "to the right of",
                 "to the right of": "to the left of"}


def probe_images(n: int, resolution: int) -> list[tuple[torch.Tensor, str, str]]:
    """(image [3, H, W] in [-1, 1], prompt, prompt with its relation turned) for shapes-bench's relations."""
    import numpy as np

    from difflab.data.shapes import render
    from difflab.data.shapes_grammar import parse_prompt
    from difflab.metrics.bench import bench_prompts
    out = []
    for entry in [e for e in bench_prompts() if e["category"] == "relation"][:n]:
        relation = parse_prompt(entry["prompt"]).relation
        image = np.asarray(render(entry["prompt"], entry["seed"], resolution).convert("RGB"))
        out.append((torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1, entry["prompt"],
                    entry["prompt"].replace(f" {relation} ", f" {RELATION_FLIP[relation]} ")))
    return out


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
    parser.add_argument("--relation", action="store_true", help="an image model: flip the relation word")
    parser.add_argument("--weights", help="a training checkpoint's ema.safetensors for --model's network (follow a run)")
    args = parser.parse_args(argv)
    if args.n < 1:
        raise SystemExit(f"--n must be at least 1, got {args.n}")
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    pipe = difflab.Pipeline.from_pretrained(args.model)
    if args.weights:
        import dataclasses

        from safetensors.torch import load_file
        weights = load_file(args.weights)
        layers = len({k.split(".")[2] for k in weights if k.startswith("context_refiner.blocks.")})
        if layers != getattr(pipe.model.config, "context_layers", 0):   # a run that grew a context refiner
            pipe.model = type(pipe.model)(config=dataclasses.replace(pipe.model.config, context_layers=layers))
        pipe.model.load_state_dict(weights, strict=True)
    model, schedule = pipe.model.eval(), pipe.schedule
    clips = probe_images(args.n, pipe.resolution) if args.relation else probe_clips(args.n)
    x0 = torch.stack([c for c, _, _ in clips])
    cond = [pipe.conditioner([c[k] for c in clips], "cpu") for k in (1, 2)]
    generator = torch.Generator().manual_seed(0)
    flag = " --relation" if args.relation else ""
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


if __name__ == "__main__":
    main()
