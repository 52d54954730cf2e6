"""Can guidance alone bind colours to shapes? Two sampling-time remedies on shapes-bench's two-object prompts.

    python benchmarks/binding_guidance.py --model shapes-v2 [--limit 100] [--threads 2]

shapes-bench's two-object prompts ("a yellow cross and an orange square"), each under its bench seed, at the
model's default sampler, steps and guidance scale g. Rows:

- **plain**: classifier-free guidance on the whole prompt (the model's default);
- **conjunction h**: composable diffusion's AND (Liu et al. 2022, eq. 9): the halves "a yellow cross" and
  "an orange square" guided separately and summed, x0 = u + g * sum_k h * (c_k - u);
- **whole + halves h**: the whole prompt guided at g, plus each half at h: x0 = u + g (c - u) + h sum_k (c_k - u);
- **traded negative g'**: the prompt with the objects' colours traded ("an orange cross and a yellow square")
  as the negative prompt, at guidance g'.

Each guided x0 is affine in the network's output at a fixed x and sigma, so the composed terms are folded
into the conditional half of difflab's CFG batch (:class:`Composed`); the sampler is unchanged.
"""

from __future__ import annotations

import argparse
import sys

import torch


class Composed(torch.nn.Module):
    """The network with extra prompts folded into the conditional half of a CFG batch ``[cond; uncond]``.

    ``halves``: the extra prompts' keyword sets (each for the B images). As the conditional output,
    ``conjunction`` returns ``u + h * sum_k (c_k - u)`` (CFG then gives ``u + g h sum_k (c_k - u)``) and
    ``whole`` returns ``c + (h / g) * sum_k (c_k - u)`` (CFG then gives ``u + g (c - u) + h sum_k (c_k - u)``)."""

    def __init__(self, network, mode: str, weight: float, scale: float):
        super().__init__()
        self.network, self.mode, self.weight, self.scale, self.halves = network, mode, weight, scale, []

    def forward(self, x, t, **cond):
        from difflab.guidance import merge_batches
        out = self.network(x, t, **cond)
        b = x.shape[0] // 2
        c, u = out[:b], out[b:]
        merged = self.halves[0]
        for half in self.halves[1:]:
            merged = merge_batches(merged, half)
        k = len(self.halves)
        parts = self.network(x[:b].repeat(k, *[1] * (x.ndim - 1)), t[:b].repeat(k), **merged).chunk(k)
        total = sum(p - u for p in parts)
        c = u + self.weight * total if self.mode == "conjunction" else c + self.weight / self.scale * total
        return torch.cat([c, u])


def traded(prompt: str) -> str:
    """The two-object prompt with its objects' colours traded."""
    import dataclasses

    from difflab.data.shapes_grammar import format_prompt, parse_prompt
    parsed = parse_prompt(prompt)
    first, second = parsed.objects
    swapped = (dataclasses.replace(first, colour=second.colour), dataclasses.replace(second, colour=first.colour))
    return format_prompt(dataclasses.replace(parsed, objects=swapped))


def score(pipe, cases, composed=None, negative=False, guidance=None, batch: int = 16) -> float:
    from difflab.metrics.adherence import check
    oks = []
    for start in range(0, len(cases), batch):
        chunk = cases[start:start + batch]
        prompts = [c["prompt"] for c in chunk]
        if composed is not None:
            composed.halves = [pipe.conditioner([p.split(" and ")[k] for p in prompts], pipe.device) for k in range(2)]
        images = pipe(prompts, seed=[c["seed"] for c in chunk], guidance_scale=guidance,
                      negative_prompt=[traded(p) for p in prompts] if negative else None).images
        oks += [check(im.convert("RGB"), p)["ok"] for im, p in zip(images, prompts)]
    return sum(oks) / len(oks)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes-v2")
    parser.add_argument("--limit", type=int, default=100, help="the first N two-object prompts")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not 1 <= args.limit <= 100:
        parser.error(f"--limit must be in [1, 100] (shapes-bench has 100 two-object prompts), got {args.limit}")
    if not 1 <= args.threads <= 64:
        parser.error(f"--threads must be in [1, 64], got {args.threads}")
    from difflab.metrics.bench import bench_prompts
    from difflab.pipelines import Pipeline
    torch.set_num_threads(args.threads)
    pipe = Pipeline.from_pretrained(args.model)
    g = pipe.defaults["guidance_scale"]
    cases = [e for e in bench_prompts() if e["category"] == "two_objects"][:args.limit]
    rows = [("plain CFG", score(pipe, cases))]
    network = pipe.model
    for mode, weights in (("conjunction", (1.0, 0.75)), ("whole", (0.25, 0.5, 1.0, 2.0))):
        for h in weights:
            pipe.model = composed = Composed(network, mode, h, g)
            name = f"conjunction, h {h:g}" if mode == "conjunction" else f"whole at {g:g} + halves at {h:g}"
            rows.append((name, score(pipe, cases, composed)))
            print(rows[-1], file=sys.stderr, flush=True)
    pipe.model = network
    for guidance in (g, 1.5):
        rows.append((f"traded-colour negative, guidance {guidance:g}",
                     score(pipe, cases, negative=True, guidance=guidance)))
    print(f"model {args.model}, {len(cases)} two-object prompts of shapes-bench, default sampling (guidance {g:g})\n")
    print("| guidance | two objects |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
