"""difflab's UNet beside diffusers' UNet2DModel at matched size, on CPU.

Two configs (16x16x1, widths (32, 64, 64), batch 64; 32x32x3, widths (64, 128, 128), batch 16),
both with two ResNet blocks per level and attention at level 1 (diffusers: AttnDownBlock2D /
AttnUpBlock2D there, plus its mid-block attention; difflab: attention_levels=(1,), mid_attention).
For each: a training step (forward + backward + AdamW) and a forward pass, in img/s. Models are
timed in alternation within one process, several rounds, medians reported: the machine is shared,
so absolute numbers drift while ratios hold. FLOPs per image come from
torch.utils.flop_counter; the fp32 matmul peak is measured in the same rounds, so "% of peak" is
achieved FLOP/s over that peak.

    python benchmarks/networks.py                 # full run (several minutes on 2 cores)
    python benchmarks/networks.py --rounds 3 --configs small
    python benchmarks/networks.py --threads 1 --clock cpu   # on a busy machine: CPU time, not wall time
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

CONFIGS = {  # name: (channels, in_channels, resolution, batch)
    "small": ((32, 64, 64), 1, 16, 64),
    "medium": ((64, 128, 128), 3, 32, 16),
}


@dataclass
class Contender:
    name: str
    model: torch.nn.Module
    call: object            # (model, x, t) -> prediction tensor


def difflab_unet(channels, in_channels, head_dim=None):
    from difflab.models import UNet

    kwargs = {} if head_dim is None else {"head_dim": head_dim}
    return UNet(in_channels, in_channels, channels=channels, layers_per_block=2, attention_levels=(1,), **kwargs)


def diffusers_unet(channels, in_channels, head_dim):
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=None, in_channels=in_channels, out_channels=in_channels,
                       block_out_channels=channels, layers_per_block=2, attention_head_dim=head_dim,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


def contenders(channels, in_channels, diffusers_heads) -> list[Contender]:
    ours = difflab_unet(channels, in_channels)
    out = [Contender(f"difflab UNet (head {ours.config.head_dim})", ours, lambda m, x, t: m(x, t))]
    for h in diffusers_heads:
        label = "default head 8" if h == 8 else f"head {h}"
        out.append(Contender(f"diffusers UNet2DModel ({label})", diffusers_unet(channels, in_channels, h),
                             lambda m, x, t: m(x, t).sample))
    return out


def train_step(c: Contender, x, t):
    """One closure per contender: forward, MSE loss, backward, AdamW (default settings)."""
    opt = torch.optim.AdamW(c.model.parameters(), lr=1e-4)

    def step():
        loss = (c.call(c.model, x, t) - x).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def forward_step(c: Contender, x, t):
    def step():
        with torch.no_grad():
            c.call(c.model, x, t)
    return step


def flops_per_image(step, batch) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / batch


def matmul_peak(n: int = 1536, repeats: int = 5) -> float:
    """Best-of-repeats fp32 matmul FLOP/s (2 n^3 per product)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best


CLOCK = time.perf_counter      # --clock cpu: process CPU time, immune to other jobs when --threads 1


def _seconds(fn) -> float:
    start = CLOCK()
    fn()
    return CLOCK() - start


def run_config(name, rounds, steps, diffusers_heads):
    channels, in_channels, res, batch = CONFIGS[name]
    torch.manual_seed(0)
    x, t = torch.randn(batch, in_channels, res, res), torch.rand(batch) * 999
    entries = contenders(channels, in_channels, diffusers_heads)
    rows = []
    for mode, make in (("train", train_step), ("forward", forward_step)):
        for c in entries:
            c.model.train(mode == "train")
        fns = [make(c, x, t) for c in entries]
        flops = [flops_per_image(f, batch) for f in fns]
        for f in fns:                                   # warm-up (oneDNN primitive caches, allocator)
            f(), f()
        times, peaks = [[] for _ in fns], []
        for _ in range(rounds):                         # alternate contenders within every round
            peaks.append(matmul_peak())
            for i, f in enumerate(fns):
                times[i].append(sum(_seconds(f) for _ in range(steps)) / steps)
        peak = statistics.median(peaks)
        for c, fl, ts in zip(entries, flops, times):
            sec = statistics.median(ts)
            rows.append(dict(config=name, mode=mode, model=c.name, params=sum(p.numel() for p in c.model.parameters()),
                             img_s=batch / sec, gflop_img=fl / 1e9, peak_frac=fl * batch / sec / peak, peak=peak / 1e9))
    return rows


def table(rows) -> str:
    lines = ["| config | step | model | params | img/s | ratio vs diffusers default | GFLOP/img | GFLOP/s | % of matmul peak |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        base = next(b for b in rows if b["config"] == r["config"] and b["mode"] == r["mode"] and "default" in b["model"])
        channels, cin, res, batch = CONFIGS[r["config"]]
        lines.append(f"| {res}x{res}x{cin} {channels} b{batch} | {r['mode']} | {r['model']} | {r['params'] / 1e6:.2f}M "
                     f"| {r['img_s']:.1f} | {r['img_s'] / base['img_s']:.2f}x | {r['gflop_img']:.2f} "
                     f"| {r['gflop_img'] * r['img_s']:.0f} | {100 * r['peak_frac']:.0f}% |")
    peaks = sorted({f"{r['peak']:.0f}" for r in rows})
    return "\n".join(lines) + f"\n\nfp32 matmul peak measured in the same rounds (median per config/step): {', '.join(peaks)} GFLOP/s"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="small,medium", help="comma list of: " + ", ".join(CONFIGS))
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds; medians are reported")
    parser.add_argument("--steps", type=int, default=2, help="steps timed per contender per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: elapsed time; cpu: process CPU time (use with --threads 1 on a busy machine)")
    parser.add_argument("--diffusers-heads", default="8,32,64", help="diffusers attention_head_dim values (8 = default)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.configs.split(",")]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or args.rounds < 1 or args.steps < 1 or args.threads < 1:
        parser.error(f"configs must be among {list(CONFIGS)} (got {unknown}); rounds, steps, threads must be >= 1")
    heads = [int(h) for h in args.diffusers_heads.split(",")]
    if 8 not in heads:
        parser.error("--diffusers-heads must include 8 (diffusers' default, the baseline of the ratios)")
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    rows = [r for n in names for r in run_config(n, args.rounds, args.steps, heads)]
    print(f"torch {torch.__version__}, {args.threads} threads, {args.clock} clock, {args.rounds} rounds x "
          f"{args.steps} steps, medians\n")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
