"""Reconstruction quality of a difflab AutoencoderKL on the shapes test split; Markdown, optionally JSON.

    python benchmarks/vae_quality.py VAE_PATH [--n 1000] [--resolution 64] [--out results.json]

VAE_PATH is an AutoencoderKL package, or a model package that keeps its VAE in ``vae/``. Every test
item is encoded to its posterior mean (``vae.encode(x).mode()``), decoded, clamped to [-1, 1] and
rounded to 8 bits (``difflab.data.to_images``), then measured against the rendered original:
- PSNR = 10 log10(255^2 / MSE) in dB, as the mean of per-image PSNR and as the PSNR of the pooled MSE;
- the shapes oracle (``difflab.metrics.adherence.check``, as shapes-bench judges generated images)
  on each reconstruction against the item's canonical prompt, and on the original as the ceiling;
- per-channel mean and std of the raw latents, beside the config's scaling_factor and shift_factor
  (a diffusion model wants ``(z - shift_factor) * scaling_factor`` near unit std).
The goals of the latent-model issue: PSNR >= 30 dB and oracle acceptance >= 99%.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from difflab.data import load_dataset, to_images, to_tensor, to_uint8
from difflab.data.shapes_grammar import parse_prompt
from difflab.metrics.adherence import check
from difflab.models.vae import AutoencoderKL

GOALS = {"psnr_db": 30.0, "accept": 0.99}
# An exact reconstruction has infinite PSNR; it counts as this many dB, above the ~89 dB of one pixel
# off by one level at 64x64, so one exact image cannot make the mean infinite.
PSNR_EXACT_DB = 100.0


def load_vae(path: Path) -> AutoencoderKL:
    """The AutoencoderKL at ``path``, or in ``path/vae`` (a latent model package)."""
    folder = path / "vae" if (path / "vae").is_dir() else path
    return AutoencoderKL.from_pretrained(folder).eval().requires_grad_(False)


def psnr_db(mse: float) -> float:
    return PSNR_EXACT_DB if mse == 0 else min(PSNR_EXACT_DB, 10 * math.log10(255.0 ** 2 / mse))


class LatentStats:
    """Running per-channel mean and std of latents z [B, c, h, w] (sums in float64)."""

    def __init__(self, channels: int):
        self.count = 0
        self.sum = torch.zeros(channels, dtype=torch.float64)
        self.sum_sq = torch.zeros(channels, dtype=torch.float64)

    def add(self, z: torch.Tensor) -> None:
        z = z.double().transpose(0, 1).flatten(1)                              # [c, B*h*w]
        self.count += z.shape[1]
        self.sum += z.sum(1)
        self.sum_sq += z.square().sum(1)

    def mean_std(self) -> tuple[list[float], list[float]]:
        mean = self.sum / self.count
        return mean.tolist(), (self.sum_sq / self.count - mean.square()).clamp_min(0).sqrt().tolist()


def measure(vae: AutoencoderKL, n: int, resolution: int, batch_size: int) -> dict:
    """Reconstruct the first ``n`` test items; per-image PSNR and oracle verdicts, latent statistics."""
    data = load_dataset("shapes", "test", resolution, length=n)
    stats, rows = LatentStats(vae.config.latent_channels), []
    with tqdm(total=n, desc="reconstructing", unit="img") as bar, torch.inference_mode():
        for start in range(0, n, batch_size):
            items = [data[i] for i in range(start, min(start + batch_size, n))]
            originals = [item["image"] for item in items]
            z = vae.encode(to_tensor(originals)).mode()                        # [B, c, h, w]
            stats.add(z)
            recons = to_images(vae.decode(z))                                  # clamped, rounded to 8 bits
            mse = (to_uint8(recons).float() - to_uint8(originals).float()).square().mean(dim=(1, 2, 3))  # [B]
            for item, recon, err in zip(items, recons, mse.tolist()):
                verdict = check(recon, item["prompt"])
                rows.append({"prompt": item["prompt"], "form": parse_prompt(item["prompt"]).kind, "mse": err,
                             "ok": verdict["ok"], "ceiling_ok": check(item["image"], item["prompt"])["ok"],
                             "failed": [r["reason"] for r in verdict["requirements"] if not r["ok"]]})
            bar.update(len(items))
    mean, std = stats.mean_std()
    return {"rows": rows, "latent_mean": mean, "latent_std": std}


def _acceptance(rows: list[dict]) -> dict:
    return {"n": len(rows), "accept": sum(r["ok"] for r in rows) / len(rows),
            "accept_originals": sum(r["ceiling_ok"] for r in rows) / len(rows)}


def summarise(rows: list[dict]) -> dict:
    forms = sorted({r["form"] for r in rows})
    return {"psnr_mean_db": sum(psnr_db(r["mse"]) for r in rows) / len(rows),
            "psnr_pooled_db": psnr_db(sum(r["mse"] for r in rows) / len(rows)),
            **_acceptance(rows),
            "accept_by_form": {f: _acceptance([r for r in rows if r["form"] == f]) for f in forms}}


def markdown(summary: dict, latents: dict) -> str:
    s = summary
    lines = ["| metric | value | goal |", "|---|---|---|",
             f"| PSNR, mean of per-image (dB) | {s['psnr_mean_db']:.2f} | >= {GOALS['psnr_db']:.0f} |",
             f"| PSNR of the pooled MSE (dB) | {s['psnr_pooled_db']:.2f} | >= {GOALS['psnr_db']:.0f} |",
             f"| oracle accepts the reconstruction | {s['accept']:.3f} ({s['n']}) | >= {GOALS['accept']:.2f} |",
             f"| oracle accepts the original (ceiling) | {s['accept_originals']:.3f} ({s['n']}) | |",
             "", "| prompt form | n | reconstructions accepted | originals accepted |", "|---|---|---|---|"]
    lines += [f"| {form} | {v['n']} | {v['accept']:.3f} | {v['accept_originals']:.3f} |"
              for form, v in s["accept_by_form"].items()]
    lines += ["", "| latent channel | mean | std |", "|---|---|---|"]
    lines += [f"| {c} | {m:+.4f} | {sd:.4f} |" for c, (m, sd) in enumerate(zip(latents["mean"], latents["std"]))]
    lines += ["", f"scaling_factor {latents['scaling_factor']:g}, shift_factor {latents['shift_factor']:g}; "
                  f"std of (z - shift_factor) * scaling_factor over all channels: {latents['normalized_std']:.4f}"]
    return "\n".join(lines)


def latent_summary(vae: AutoencoderKL, mean: list[float], std: list[float]) -> dict:
    """Per-channel statistics, the config's factors and the std of the normalised latents (pooled)."""
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    # pooled variance over channels of equal size: E[(z - shift)^2] - (E[z - shift])^2
    second = sum(sd ** 2 + (m - shift) ** 2 for m, sd in zip(mean, std)) / len(mean)
    first = sum(m - shift for m in mean) / len(mean)
    return {"mean": mean, "std": std, "scaling_factor": scale, "shift_factor": shift,
            "normalized_std": abs(scale) * math.sqrt(max(second - first ** 2, 0.0))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vae", type=Path, help="an AutoencoderKL package, or a model package with a vae/ folder")
    parser.add_argument("--n", type=int, default=1000, help="test-split items (the split holds 1000)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None, help="write the summary and every verdict as JSON here")
    args = parser.parse_args()
    if not 1 <= args.n <= 1000:
        parser.error(f"--n must be in 1..1000 (the shapes test split), got {args.n}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be positive, got {args.batch_size}")
    vae = load_vae(args.vae)
    f = vae.config.downscale
    if args.resolution < 16 or args.resolution % f:
        parser.error(f"--resolution must be >= 16 and divisible by the VAE's downscale {f}, got {args.resolution}")
    if vae.config.in_channels != 3:
        parser.error(f"the shapes world is RGB; this VAE takes {vae.config.in_channels}-channel images")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.time()
    result = measure(vae, args.n, args.resolution, args.batch_size)
    summary = summarise(result["rows"])
    latents = latent_summary(vae, result["latent_mean"], result["latent_std"])
    seconds = time.time() - start
    print(f"VAE {args.vae} ({vae.num_parameters:,} parameters, downscale {f}), shapes test split at "
          f"{args.resolution}x{args.resolution}, {seconds:.0f} s\n")
    print(markdown(summary, latents))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {"vae": str(args.vae), "n": args.n, "resolution": args.resolution, "goals": GOALS,
                  "seconds": seconds, "summary": summary, "latents": latents, "results": result["rows"]}
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
