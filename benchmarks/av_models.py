"""Judge a video or audio model on prompts it was not trained on; print a Markdown table.

    python benchmarks/av_models.py video --model shapes-video [--n 48] [--steps 20] [--batch 8]
    python benchmarks/av_models.py audio --model sounds [--n 48] [--steps 20] [--batch 8]
    ... --n 0 --gallery docs/images     # only the README's gallery

What is generated and judged, and how, is :mod:`difflab.metrics.av_eval` (``difflab eval MODEL`` runs
the same for a video or audio package and writes a JSON report); this script prints the Markdown table
BENCHMARKS.md keeps, and the README's gallery. Each set's row has the rate of every check the prompts
state, overall, and FD and KID x 1000 to real samples of the same prompts and seeds on difflab's own
features (:mod:`difflab.metrics.av_distances`; not FVD or FAD); its "(real)" row judges those real
samples (the judge's ceiling) and compares them with real samples of other seeds (the distances' floor).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import difflab
from difflab.metrics.av_eval import evaluate_media, format_rows, prompt_sets


GALLERY = {"video": ["a red circle moving right", "a blue square falling", "a green triangle bouncing",
                     "a yellow cross and a purple circle passing each other"],
           "audio": ["a C4 note on a flute", "a low note then a high note", "an A minor chord", "three clicks"]}


def gallery(kind: str, pipe, folder, seed: int = 0) -> None:
    """The README's pictures: four clips side by side as one looping GIF (4x, nearest) or the four
    spectrograms as one PNG, and each output as its own file with its recipe."""
    from pathlib import Path

    import numpy as np
    from PIL import Image
    from difflab.pipelines import media_files
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    result = pipe(GALLERY[kind], seed=seed)
    result.save(folder, prefix=kind)
    if kind == "video":
        row = np.concatenate([np.pad(v, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=255) for v in result.videos], 2)
        big = row.repeat(4, axis=1).repeat(4, axis=2)
        media_files.save_video(big, {"prompts": GALLERY[kind], "seed": seed}, folder / f"{kind}-gallery.gif",
                               overwrite=True)
    else:
        strips = [np.pad(np.asarray(im), 2, constant_values=255) for im in result.images]
        Image.fromarray(np.concatenate(strips, 1)).resize((4 * sum(s.shape[1] for s in strips), 4 * strips[0].shape[0]),
                                                          Image.NEAREST).save(folder / f"{kind}-gallery.png")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("video", "audio"))
    parser.add_argument("--model", required=True)
    parser.add_argument("--n", type=int, default=48, help="prompts per set")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the package's)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the package's)")
    parser.add_argument("--sampler", default=None, help="sampler (default: the package's)")
    parser.add_argument("--sets", default=None, help="judge only these prompt sets, comma-separated (held-out,test)")
    parser.add_argument("--only", default=None, help="judge only test-split prompts containing this text")
    parser.add_argument("--gallery", default=None, help="also write the README's gallery (GIF or PNG, and files) here")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(__import__("os").environ.get("THREADS", "2")))
    try:
        prompts_of = prompt_sets(args.kind, args.n, args.only) if args.n >= 1 else {}   # bad flags fail before loading
    except ValueError as error:
        raise SystemExit(str(error)) from None
    if args.sets and prompts_of and not set(args.sets.split(",")) <= set(prompts_of):
        raise SystemExit(f"--sets takes names from {', '.join(prompts_of)}, got {args.sets!r}")
    if args.sets:
        prompts_of = {name: p for name, p in prompts_of.items() if name in args.sets.split(",")}
    pipe = difflab.Pipeline.from_pretrained(args.model)
    if args.gallery:
        gallery(args.kind, pipe, args.gallery)
    if not prompts_of:
        return
    report = evaluate_media(pipe, prompts_of, args.batch, steps=args.steps, guidance_scale=args.guidance,
                            sampler=args.sampler)
    only_flag = f" --only {args.only!r}" if args.only else ""
    print(f"`python benchmarks/av_models.py {args.kind} --model {args.model} --n {args.n}"
          f"{f' --steps {args.steps}' if args.steps else ''}{only_flag}"
          f"{f' --guidance {args.guidance:g}' if args.guidance is not None else ''}"
          f"{f' --sampler {args.sampler}' if args.sampler else ''}{f' --sets {args.sets}' if args.sets else ''}` — {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}; {report['per_second']:.2f} clips/s\n")
    print("\n".join(format_rows(report["rows"], report["sizes"])))


if __name__ == "__main__":
    main()
