"""ControlNet on the bundled model: do generated objects lie where the control says? (issue 15)

For each prompt of a balanced sample of shapes-bench, the scene the renderer draws for that prompt and
seed (``difflab.data.shapes.scene_for``) gives the control: its layout map (``--kind layout``) or the
edges of its render (``--kind edges``). The model generates the prompt with the ControlNet and, with
the same seeds, without it. Reported:

- mean IoU between the objects of the output and those of the scene's layout map
  (``difflab.metrics.layout.layout_iou``: soft masks, each control object matched to one output object,
  extra or missing objects count 0), with and without control;
- shapes-bench adherence (the oracle) per category, with and without control.

    python benchmarks/controlnet.py --controlnet runs/cn-layout/model --out benchmarks/results/controlnet.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

COLUMNS = ("single_object", "two_objects", "counting", "colours", "position", "relation")


def controls_for(entries: list[dict], kind: str, resolution: int) -> tuple[list, list]:
    """(control images, layout maps of the same scenes) for every entry."""
    from difflab.data.controls import edge_map, layout_map
    from difflab.data.shapes import render_scene, scene_for

    controls, layouts = [], []
    for e in entries:
        scene = scene_for(e["prompt"], e["seed"])
        layouts.append(layout_map(scene, resolution))
        controls.append(layouts[-1] if kind == "layout" else edge_map(render_scene(scene, resolution)))
    return controls, layouts


def generate(pipe, entries: list[dict], controls: list | None, scale: float, batch: int = 16,
             guidance: float | None = None) -> list:
    """One image per entry, in batches; with ``controls``, each image with its own control image;
    ``guidance``: the CFG scale (None: the package's)."""
    images = []
    for start in range(0, len(entries), batch):
        chunk = entries[start:start + batch]
        extra = {} if controls is None else {"control_image": controls[start:start + batch], "control_scale": scale}
        if guidance is not None:
            extra["guidance_scale"] = guidance
        images += pipe([e["prompt"] for e in chunk], seed=[e["seed"] for e in chunk], **extra).images
    return [im.convert("RGB") for im in images]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--controlnet", required=True, help="a ControlNet package trained on the model")
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--kind", choices=("layout", "edges"), default=None, help="default: the package's kind")
    parser.add_argument("--limit", type=int, default=150, help="balanced shapes-bench prompts")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--guidance", type=float, default=None, help="CFG scale of both runs (default: the package's)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    import torch

    from difflab.metrics.layout import layout_iou
    from difflab.metrics.adherence import check
    from difflab.settings import package_folder
    from difflab.metrics.bench import balanced, bench_prompts, report
    from difflab.pipelines import Pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    kind = args.kind or json.loads((package_folder(args.controlnet) / "config.json").read_text())["controlnet"]["kind"]
    pipe = Pipeline.from_pretrained(args.model, controlnet=args.controlnet)
    entries = balanced(bench_prompts(), args.limit)
    controls, layouts = controls_for(entries, kind, pipe.resolution)
    rows = {}
    for label, used in (("with control", controls), ("without", None)):
        started = time.perf_counter()
        images = generate(pipe, entries, used, args.scale, guidance=args.guidance)
        ious = [layout_iou(im, layout)["mean_iou"] for im, layout in zip(images, layouts)]
        table = report(entries, [check(im, e["prompt"])["ok"] for im, e in zip(images, entries)])
        rows[label] = {"mean_iou": sum(ious) / len(ious), "iou_at_least_0.9": sum(i >= 0.9 for i in ious) / len(ious),
                       "table": table, "seconds": round(time.perf_counter() - started, 1)}
        print(f"{label}: IoU {rows[label]['mean_iou']:.3f}, overall {table['overall']['accuracy']:.3f}",
              file=sys.stderr, flush=True)
    print(f"model {args.model}, ControlNet {args.controlnet} ({kind}, scale {args.scale:g}, guidance "
          f"{args.guidance if args.guidance is not None else 'default'}), "
          f"{len(entries)} prompts of shapes-bench\n")
    print("| | mean IoU | images with IoU >= 0.9 | overall | " + " | ".join(COLUMNS) + " |")
    print("|---|---|---|---|" + "---|" * len(COLUMNS))
    for label, row in rows.items():
        t = row["table"]
        print(f"| {label} | **{row['mean_iou']:.3f}** | {row['iou_at_least_0.9']:.2f} | {t['overall']['accuracy']:.3f} | "
              + " | ".join(f"{t[c]['accuracy']:.2f}" for c in COLUMNS) + " |")
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "controlnet": args.controlnet, "kind": kind,
                                        "scale": args.scale, "guidance": args.guidance, "limit": args.limit, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
