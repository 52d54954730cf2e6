"""Stable Diffusion's UNet at full size: difflab's SDUNet beside diffusers' UNet2DConditionModel, on CPU.

diffusers' UNet2DConditionModel is built from SD 1.5's published ``unet/config.json`` (written out
below; 860 M parameters), filled with seeded random weights (nothing is downloaded), and difflab's
SDUNet gets the same tensors through difflab's key map (:mod:`difflab.convert.diffusers_unet`).
One evaluation is what a classifier-free-guidance step runs: latents [2, 4, 64, 64] (512x512
images), text tokens [2, 77, 768], fp32, inference mode.

* Speed: both models in one worker process (the SDUNet shares the diffusers model's weight
  storage), a warm-up call each, then alternating rounds (the order flips every round); the median
  seconds per evaluation is reported. FLOPs are counted (``torch.utils.flop_counter``) in the
  warm-up call; the fp32 matmul peak is timed in the same rounds, as in ``benchmarks/networks.py``.
* Memory: each model alone in a fresh process. RSS once the weights are in memory ("after load"),
  then the kernel's peak-RSS counter (VmHWM) is reset (``/proc/self/clear_refs``) before each of
  two calls and read after it; the higher counts: "peak above load" = peak RSS - RSS after load.
* Agreement: max |SDUNet - diffusers| over the output, absolute and relative to max |diffusers|;
  the script exits 1 above 1e-3 relative.

    python benchmarks/real_models.py                         # SD 1.5, 5 rounds (~5 min on 2 cores)
    python benchmarks/real_models.py --rounds 3 --out benchmarks/results/real_models.json
    python benchmarks/real_models.py --models sd15,sdxl      # + SDXL at 1024x1024: ~12 GB per process, ~30 min
    python benchmarks/real_models.py --models sdxl --speed-only   # SDXL speed alone (~15 min)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

_CROSS_DOWN, _CROSS_UP = "CrossAttnDownBlock2D", "CrossAttnUpBlock2D"
# The published unet/config.json files (runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-xl-base-1.0),
# less the "_class_name"/"_diffusers_version" entries and the keys left at diffusers' defaults.
CONFIGS = {
    "sd15": dict(act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280],
                 center_input_sample=False, cross_attention_dim=768,
                 down_block_types=[_CROSS_DOWN, _CROSS_DOWN, _CROSS_DOWN, "DownBlock2D"], downsample_padding=1,
                 flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2, mid_block_scale_factor=1,
                 norm_eps=1e-05, norm_num_groups=32, out_channels=4, sample_size=64,
                 up_block_types=["UpBlock2D", _CROSS_UP, _CROSS_UP, _CROSS_UP]),
    "sdxl": dict(act_fn="silu", addition_embed_type="text_time", addition_embed_type_num_heads=64,
                 addition_time_embed_dim=256, attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280],
                 center_input_sample=False, cross_attention_dim=2048,
                 down_block_types=["DownBlock2D", _CROSS_DOWN, _CROSS_DOWN], downsample_padding=1,
                 flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2, mid_block_scale_factor=1,
                 norm_eps=1e-05, norm_num_groups=32, out_channels=4, projection_class_embeddings_input_dim=2816,
                 sample_size=128, transformer_layers_per_block=[1, 2, 10],
                 up_block_types=[_CROSS_UP, _CROSS_UP, "UpBlock2D"], use_linear_projection=True),
}
NAMES = {"sd15": "SD 1.5 UNet, 512x512 (64x64 latents)", "sdxl": "SDXL UNet, 1024x1024 (128x128 latents)"}
MODELS = ("difflab", "diffusers")
BATCH = 2                       # a classifier-free-guidance evaluation: conditional + unconditional
TOLERANCE = 1e-3                # max |difflab - diffusers| / max |diffusers| beyond which the run fails
CLOCK = time.perf_counter       # --clock cpu: process CPU time


# ---------------------------------------------------------------- models and inputs (run in the workers)

def diffusers_unet(family: str, device: str = "cpu"):
    """diffusers' UNet2DConditionModel of the published config; on CPU, every parameter seeded-random:
    norm gains 1 + 0.1 noise, biases 0.1 noise, weights noise / sqrt(fan_in) (diffusers' init zeroes
    conv_out and proj_out, which would hide a wrong weight)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**CONFIGS[family])
    if device == "meta":
        return unet.eval()
    unet.to_empty(device=device)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            p.normal_(generator=g)
            if p.dim() == 1:
                p.mul_(0.1).add_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
            else:
                p.div_(math.sqrt(p[0].numel()))
    return unet.eval()


def difflab_unet(family: str, unet):
    """difflab's SDUNet holding ``unet``'s tensors (the same storage: fp32 to fp32 is no copy)."""
    from difflab.convert.diffusers_unet import sd_unet_from_diffusers_state
    from difflab.models.sd_unet import SDUNetConfig

    return sd_unet_from_diffusers_state(unet.state_dict(), SDUNetConfig.from_diffusers(CONFIGS[family]))


def inputs(family: str, device: str = "cpu") -> dict:
    """Latents, model time, text tokens (and SDXL's pooled text + size/crop ids) for one CFG evaluation."""
    cfg, g = CONFIGS[family], torch.Generator().manual_seed(1)
    side = cfg["sample_size"]
    made = dict(x=torch.randn(BATCH, 4, side, side, generator=g), t=torch.full((BATCH,), 500.0),
                context=torch.randn(BATCH, 77, cfg["cross_attention_dim"], generator=g), pooled=None, time_ids=None)
    if cfg.get("addition_embed_type"):
        made["pooled"] = torch.randn(BATCH, 1280, generator=g)
        made["time_ids"] = torch.tensor([[8.0 * side, 8 * side, 0, 0, 8 * side, 8 * side]] * BATCH)
    return {k: None if v is None else v.to(device) for k, v in made.items()}


def call(which: str, model, a: dict) -> torch.Tensor:
    if which == "difflab":
        return model(a["x"], a["t"], a["context"], pooled=a["pooled"], time_ids=a["time_ids"])
    extra = None if a["pooled"] is None else {"text_embeds": a["pooled"], "time_ids": a["time_ids"]}
    return model(a["x"], a["t"], encoder_hidden_states=a["context"], added_cond_kwargs=extra).sample


# ---------------------------------------------------------------- worker: speed and agreement

def _seconds(fn) -> float:
    start = CLOCK()
    fn()
    return CLOCK() - start


def matmul_peak(n: int = 1536, repeats: int = 3) -> float:
    """Best-of-repeats fp32 matmul FLOP/s (2 n^3 per product)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    return 2 * n ** 3 / min(_seconds(lambda: a @ b) for _ in range(repeats))


def count_cpu_attention() -> None:
    """torch's FLOP counter has no formula for the CPU flash-attention kernel (it would count 0):
    give it the one of the other SDPA kernels, 4 B h N L d."""
    from torch.utils import flop_counter

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(op)(
            lambda q, k, v, *args, out_shape=None, **kwargs: flop_counter.sdpa_flop_count(q, k, v))


def time_worker(family: str, rounds: int) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    count_cpu_attention()
    ref = diffusers_unet(family)
    models = {"difflab": difflab_unet(family, ref), "diffusers": ref}
    a = inputs(family)
    outs, flops = {}, {}
    with torch.inference_mode():
        for w, m in models.items():                                         # the warm-up call counts FLOPs
            with FlopCounterMode(display=False) as counter:
                outs[w] = call(w, m, a)
            flops[w] = counter.get_total_flops()
        err = (outs["difflab"] - outs["diffusers"]).abs().max().item()
        scale = outs["diffusers"].abs().max().item()
        del outs
        times, peaks = {w: [] for w in models}, []
        for r in range(rounds):
            peaks.append(matmul_peak())
            for w in (MODELS if r % 2 == 0 else MODELS[::-1]):
                times[w].append(_seconds(lambda: call(w, models[w], a)))
            print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{w} {times[w][-1]:.2f} s" for w in MODELS),
                  file=sys.stderr, flush=True)
    return dict(times=times, matmul_peak=peaks, max_abs_diff=err, max_abs_ref=scale, flops=flops,
                params=sum(p.numel() for p in ref.parameters()))


# ---------------------------------------------------------------- worker: memory of one model alone

def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_worker(family: str, which: str, calls: int = 2) -> dict:
    import gc

    model = diffusers_unet(family)
    if which == "difflab":
        model = difflab_unet(family, model)                                   # the diffusers module is dropped
    a = inputs(family)
    gc.collect()
    loaded = _status_kb("VmRSS")
    peaks = []
    with torch.inference_mode():
        for _ in range(calls):
            Path("/proc/self/clear_refs").write_text("5")                     # reset VmHWM to the current RSS
            before = _status_kb("VmRSS")
            call(which, model, a)
            peaks.append(dict(rss_before_kb=before, peak_kb=_status_kb("VmHWM")))
    return dict(rss_loaded_kb=loaded, calls=peaks, weights_bytes=sum(p.numel() * p.element_size()
                                                                      for p in model.parameters()))


# ---------------------------------------------------------------- driver

def worker(args: list[str], threads: int, clock: str) -> dict:
    """Run this script as a worker in a fresh process; its last stdout line is JSON."""
    cmd = [sys.executable, __file__, "--threads", str(threads), "--clock", clock, "--worker", *args]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(family: str, rounds: int, threads: int, clock: str, memory: bool = True) -> dict:
    result = {"family": family}
    for which in MODELS if memory else ():                                   # memory first: one model per process
        print(f"{family}: memory of {which} (own process)", file=sys.stderr, flush=True)
        result[f"memory_{which}"] = worker(["memory", family, which], threads, clock)
    print(f"{family}: speed, both models, {rounds} rounds", file=sys.stderr, flush=True)
    result["speed"] = worker(["time", family, str(rounds)], threads, clock)
    return result


def rows_of(result: dict) -> list[dict]:
    family, speed = result["family"], result["speed"]
    base = statistics.median(speed["times"]["diffusers"])
    rows = []
    for which in MODELS:
        ts, mem = speed["times"][which], result.get(f"memory_{which}")
        sec = statistics.median(ts)
        row = dict(family=family, model=which, params=speed["params"], seconds=sec, min=min(ts), max=max(ts),
                   speedup=base / sec, gflop=speed["flops"][which] / 1e9, gflop_s=speed["flops"][which] / sec / 1e9,
                   weights_gb=None, loaded_gb=None, above_gb=None, peak_gb=None)      # None: --speed-only
        if mem is not None:
            peak = max(c["peak_kb"] for c in mem["calls"])
            row.update(weights_gb=mem["weights_bytes"] / 1e9, loaded_gb=mem["rss_loaded_kb"] * 1024 / 1e9,
                       above_gb=(peak - mem["rss_loaded_kb"]) * 1024 / 1e9, peak_gb=peak * 1024 / 1e9)
        rows.append(row)
    return rows


def _gb(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} GB"


def table(results: list[dict]) -> str:
    lines = ["| model | UNet | s / eval (median) | min-max | speed vs diffusers | GFLOP / eval | GFLOP/s "
             "| RSS after load | peak above load | peak RSS |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for res in results:
        label = "difflab SDUNet", "diffusers UNet2DConditionModel"
        for r, name in zip(rows_of(res), label):
            lines.append(f"| {NAMES[r['family']]}, {r['params'] / 1e6:.0f} M | {name} | {r['seconds']:.2f} "
                         f"| {r['min']:.2f}-{r['max']:.2f} | {r['speedup']:.2f}x | {r['gflop']:.0f} "
                         f"| {r['gflop_s']:.0f} | {_gb(r['loaded_gb'])} | {_gb(r['above_gb'])} | {_gb(r['peak_gb'])} |")
        s = res["speed"]
        relative = s["max_abs_diff"] / s["max_abs_ref"]
        notes.append(f"{res['family']}: max |difflab - diffusers| = {s['max_abs_diff']:.3g} "
                     f"(max |diffusers| = {s['max_abs_ref']:.3g}, relative {relative:.2g}); "
                     f"fp32 matmul peak in the same rounds: {statistics.median(s['matmul_peak']) / 1e9:.0f} GFLOP/s")
    return "\n".join(lines) + "\n\n" + "\n".join(notes)


def machine() -> dict:
    import diffusers

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return dict(cpu=cpu, torch=torch.__version__, diffusers=diffusers.__version__, python=platform.python_version(),
                date=datetime.date.today().isoformat())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sd15", help="comma list of: " + ", ".join(CONFIGS))
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians are reported")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: elapsed time; cpu: process CPU time (use with --threads 1 on a busy machine)")
    parser.add_argument("--speed-only", action="store_true", help="skip the memory processes")
    parser.add_argument("--out", type=Path, help="write the raw measurements as JSON here")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.worker:
        kind, family, extra = args.worker[0], args.worker[1], args.worker[2]
        out = time_worker(family, int(extra)) if kind == "time" else memory_worker(family, extra)
        print(json.dumps(out))
        return out
    families = [n.strip() for n in args.models.split(",")]
    unknown = [n for n in families if n not in CONFIGS]
    if unknown or args.rounds < 1 or args.threads < 1:
        parser.error(f"models must be among {list(CONFIGS)} (got {unknown}); rounds and threads must be >= 1")
    started = time.perf_counter()
    results = [measure(f, args.rounds, args.threads, args.clock, not args.speed_only) for f in families]
    info = dict(machine(), threads=args.threads, clock=args.clock, rounds=args.rounds, batch=BATCH,
                minutes=(time.perf_counter() - started) / 60)
    print(f"torch {info['torch']}, diffusers {info['diffusers']}, {args.threads} threads, {args.clock} clock, "
          f"{args.rounds} rounds, medians; {info['cpu']}; {info['minutes']:.1f} min\n")
    print(table(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        rows = [r for res in results for r in rows_of(res)]
        args.out.write_text(json.dumps(dict(info, rows=rows, raw=results), indent=1) + "\n")
    bad = [r["family"] for r in results if r["speed"]["max_abs_diff"] > TOLERANCE * r["speed"]["max_abs_ref"]]
    if bad:
        sys.exit(f"outputs disagree beyond {TOLERANCE} relative for: {', '.join(bad)}")
    return results


if __name__ == "__main__":
    main()
