"""What do the shapes image encoders know about a scene's objects? A linear probe on each (issue 15).

An IP-Adapter passes on only what its image encoder's feature holds. For each encoder in
:data:`difflab.models.image_encoders.IMAGE_ENCODERS` this fits the same linear probe (logistic
regression, Adam, full batch) on the features of the same freshly drawn scenes, and reports on other
scenes how often it names *exactly* the set of colours, of shapes, of colour-shape pairs present, and
the 3x3 cells occupied (a layout property, for contrast):

    python benchmarks/image_encoder_probe.py [--train 8000 --test 2000]
"""

from __future__ import annotations

import argparse
import random
import sys

import numpy as np
import torch
import torch.nn.functional as F

from difflab.data.shapes import realize, render_scene, sample_prompt
from difflab.data.shapes_grammar import COLOURS, SHAPES

PAIRS = [(c, s) for c in COLOURS for s in SHAPES]


def labels(scene) -> dict[str, np.ndarray]:
    out = {"colours": np.zeros(len(COLOURS)), "shapes": np.zeros(len(SHAPES)), "pairs": np.zeros(len(PAIRS)),
           "cells": np.zeros(9)}
    for o in scene.objects:
        out["colours"][list(COLOURS).index(o.colour)] = 1
        out["shapes"][SHAPES.index(o.shape)] = 1
        out["pairs"][PAIRS.index((o.colour, o.shape))] = 1
        out["cells"][3 * o.cell[0] + o.cell[1]] = 1
    return out


def data(n: int, seed: str):
    rng = random.Random(seed)
    scenes = [realize(sample_prompt(rng), rng) for _ in range(n)]
    ys = [labels(s) for s in scenes]
    return [render_scene(s, 32) for s in scenes], {k: torch.tensor(np.stack([y[k] for y in ys]), dtype=torch.float32)
                                                   for k in ys[0]}


def probe(train_x, train_y, test_x, test_y, steps: int = 1500) -> float:
    """Exact-set accuracy of a logistic-regression probe trained on (train_x, train_y)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(train_x.shape[1], train_y.shape[1])
    optimizer = torch.optim.Adam(head.parameters(), 1e-2)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(head(train_x), train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float(((head(test_x) > 0) == test_y.bool()).all(1).float().mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=8000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from difflab.models.image_encoders import IMAGE_ENCODERS, image_encoder
    train_images, train_y = data(args.train, "difflab-probe-train")
    test_images, test_y = data(args.test, "difflab-probe-test")
    print(f"linear probes, {args.train} training scenes, {args.test} test scenes: exact-set accuracy\n")
    print("| encoder | feature dim | colours | shapes | colour-shape pairs | cells occupied |\n|---|---|---|---|---|---|")
    for name in IMAGE_ENCODERS:
        encoder = image_encoder(name)
        features = [torch.cat([encoder(images[i:i + 500]) for i in range(0, len(images), 500)])
                    for images in (train_images, test_images)]
        rates = {k: probe(features[0], train_y[k], features[1], test_y[k]) for k in train_y}
        print(f"| {name} | {encoder.feature_dim} | {rates['colours']:.3f} | {rates['shapes']:.3f} | "
              f"{rates['pairs']:.3f} | {rates['cells']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
