"""Train the image encoder of shapes image prompts: ``python -m difflab.train.image_encoder``.

An IP-Adapter (Ye et al. 2023) can only pass on what its image encoder sees. The FID feature network
(:mod:`difflab.metrics.train_features`) was trained to describe a whole scene, positions included,
and its pooled features tell apart which coloured shapes a scene holds badly (its own head names the
exact set of colour-shape pairs in 3% of fresh scenes, `benchmarks/image_encoder_probe.py`). An image
prompt should carry the opposite: *which* objects, in which colours and how many, on what ground,
wherever they lie. This network is trained for exactly that, on freshly drawn scenes every step
(multi-label: each colour-shape pair present at least 1, 2 and 3 times; the sizes present; the
background), and its pooled, standardised features are what ``image_encoder("shapes-objects")``
returns. A few CPU minutes.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from difflab.data.shapes import ShapesDataset, realize, render_scene, sample_prompt
from difflab.data.shapes_grammar import BACKGROUNDS, COLOURS, SHAPES, SIZES
from difflab.metrics.features import FeatureConfig, FeatureNet, as_uint8_batch, extract, save_feature_net
from difflab.models.image_encoders import OBJECTS_WEIGHTS as WEIGHTS

PAIRS = [(c, s) for c in COLOURS for s in SHAPES]
COUNTS = (1, 2, 3)                   # "at least k copies" of each pair
NUM_TARGETS = len(PAIRS) * len(COUNTS) + len(SIZES) + len(BACKGROUNDS)


def object_targets(scene) -> np.ndarray:
    """Multi-hot: pair p present >= k times (pair-major, k in COUNTS), sizes present, background."""
    counts = np.zeros(len(PAIRS), np.int64)
    sizes, background = np.zeros(len(SIZES), np.float32), np.zeros(len(BACKGROUNDS), np.float32)
    for o in scene.objects:
        counts[PAIRS.index((o.colour, o.shape))] += 1
        sizes[SIZES.index(o.size)] = 1
    background[list(BACKGROUNDS).index(scene.background)] = 1
    at_least = (counts[:, None] >= np.array(COUNTS)[None, :]).astype(np.float32).reshape(-1)
    return np.concatenate([at_least, sizes, background])


def scenes_batch(rng: random.Random, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    scenes = [realize(sample_prompt(rng), rng) for _ in range(n)]
    return as_uint8_batch([render_scene(s, 32) for s in scenes]), torch.from_numpy(np.stack([object_targets(s) for s in scenes]))


def train(steps: int = 4000, batch_size: int = 128, lr: float = 3e-3, seed: int = 0, log=print) -> FeatureNet:
    torch.manual_seed(seed)
    rng = random.Random(f"difflab-image-encoder-{seed}")
    net = FeatureNet(FeatureConfig("shapes-objects", 3, 32, widths=(32, 64, 128), num_outputs=NUM_TARGETS))
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    for step in range(steps):
        images, targets = scenes_batch(rng, batch_size)          # fresh scenes every step: nothing to overfit
        loss = F.binary_cross_entropy_with_logits(net.head(net.features(net.prepare(images))), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"step {step:5d} loss {loss.item():.4f}")
    return net.eval().requires_grad_(False)


@torch.no_grad()
def held_out(net: FeatureNet, n: int = 1000) -> dict:
    """Exact-match rates on fresh scenes (another seed): the set of pairs, the pairs with their counts, all."""
    images, targets = scenes_batch(random.Random("difflab-image-encoder-held-out"), n)
    predicted = (net.head(net.features(net.prepare(images))) > 0).float()
    hits = predicted == targets
    pairs = hits[:, :len(PAIRS) * len(COUNTS)].reshape(n, len(PAIRS), len(COUNTS))
    return {"pairs": float(pairs[..., 0].all(1).float().mean()), "pairs_and_counts": float(pairs.all((1, 2)).float().mean()),
            "all": float(hits.all(1).float().mean())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not 1 <= args.steps <= 1_000_000 or not 1 <= args.threads <= 256:
        parser.error(f"--steps must be in [1, 1000000] and --threads in [1, 256], got {args.steps}, {args.threads}")
    torch.set_num_threads(args.threads)
    start = time.time()
    net = train(args.steps, log=lambda line: print(line, flush=True))
    rates = held_out(net)
    data = ShapesDataset("test", 32, length=2000)
    reference = extract(net, [data[i]["image"] for i in range(len(data))]).float()
    save_feature_net(net, WEIGHTS, reference)
    print(f"held-out exact match: {', '.join(f'{k} {v:.3f}' for k, v in rates.items())}; "
          f"{time.time() - start:.0f} s -> {WEIGHTS}")


if __name__ == "__main__":
    main()
