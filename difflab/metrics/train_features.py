"""Train the feature networks that difflab's FID and KID use: ``python -m difflab.metrics.train_features``.

shapes: multi-label attribute recognition (colours, shapes, colour-shape pairs, occupied cells, sizes,
background, object count) on freshly drawn scenes of every pair, held-out ones included (this network
measures images; it is not a generator that must not see them). digits: 10-class recognition on the
train split with random shifts. A few CPU minutes in all. The reference features of real images
(shapes: 2000 test-split renders; digits: all 1797 images) are stored beside the weights.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from difflab.data.digits import DigitsDataset
from difflab.data.shapes import ShapesDataset, realize, render_scene, sample_prompt
from difflab.data.shapes_grammar import BACKGROUNDS, COLOURS, SHAPES, SIZES
from difflab.metrics.features import FeatureConfig, FeatureNet, as_uint8_batch, extract, save_feature_net, weights_path

PAIRS = [(c, s) for c in COLOURS for s in SHAPES]
NUM_ATTRIBUTES = len(COLOURS) + len(SHAPES) + len(PAIRS) + 9 + len(SIZES) + len(BACKGROUNDS) + 3


@dataclass(frozen=True)
class TrainConfig:
    dataset: str
    steps: int
    batch_size: int = 64
    lr: float = 3e-3
    train_images: int = 12_000
    reference_images: int = 2000
    seed: int = 0


PRESETS = {"shapes": TrainConfig("shapes", steps=1200), "digits": TrainConfig("digits", steps=300)}


def scene_attributes(scene) -> np.ndarray:
    """Multi-hot target: colours, shapes, pairs, cells, sizes present; background; number of objects."""
    parts = [np.zeros(n, np.float32) for n in (len(COLOURS), len(SHAPES), len(PAIRS), 9, len(SIZES),
                                               len(BACKGROUNDS), 3)]
    for o in scene.objects:
        parts[0][list(COLOURS).index(o.colour)] = 1
        parts[1][SHAPES.index(o.shape)] = 1
        parts[2][PAIRS.index((o.colour, o.shape))] = 1
        parts[3][3 * o.cell[0] + o.cell[1]] = 1
        parts[4][SIZES.index(o.size)] = 1
    parts[5][list(BACKGROUNDS).index(scene.background)] = 1
    parts[6][len(scene.objects) - 1] = 1
    return np.concatenate(parts)


def shapes_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = random.Random(f"difflab-features-{seed}")
    scenes = [realize(sample_prompt(rng), rng) for _ in range(n)]
    images = as_uint8_batch([render_scene(s, 32) for s in scenes])
    return images, torch.from_numpy(np.stack([scene_attributes(s) for s in scenes]))


def digits_data() -> tuple[torch.Tensor, torch.Tensor]:
    data = DigitsDataset("train", 32)
    items = [data[i] for i in range(len(data))]
    return as_uint8_batch([it["image"] for it in items]), torch.tensor([it["label"] for it in items])


def _shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels, padding with the border (augmentation for digits)."""
    dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=generator))
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    h, w = x.shape[-2:]
    return padded[..., max_shift + dy: max_shift + dy + h, max_shift + dx: max_shift + dx + w]


def train(config: TrainConfig) -> tuple[FeatureNet, float]:
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    if config.dataset == "shapes":
        images, targets = shapes_data(config.train_images, config.seed)
        net = FeatureNet(FeatureConfig("shapes", 3, 32, num_outputs=NUM_ATTRIBUTES))
        loss_fn = F.binary_cross_entropy_with_logits
    else:
        images, targets = digits_data()
        net = FeatureNet(FeatureConfig("digits", 1, 32, num_outputs=10))
        loss_fn = F.cross_entropy
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.steps)
    for step in range(config.steps):
        index = torch.randint(0, len(images), (config.batch_size,), generator=generator)
        x = net.prepare(images[index])
        if config.dataset == "digits":
            x = _shift(x, generator)
        loss = loss_fn(net.head(net.features(x)), targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 100 == 0 or step == config.steps - 1:
            print(f"{config.dataset} step {step:5d} loss {loss.item():.4f}", flush=True)
    return net.eval().requires_grad_(False), float(loss.item())


@torch.no_grad()
def held_out_accuracy(net: FeatureNet, dataset: str) -> float:
    """Exact-match accuracy on fresh data: all attributes right (shapes) or the class (digits test)."""
    if dataset == "shapes":
        images, targets = shapes_data(1000, seed=12345)
        predicted = (net.head(net.features(net.prepare(images))) > 0).float()   # the head reads raw features
        return float((predicted == targets).all(dim=1).float().mean())
    data = DigitsDataset("test", 32)
    images = as_uint8_batch([data[i]["image"] for i in range(len(data))])
    labels = torch.tensor([data[i]["label"] for i in range(len(data))])
    return float((net.head(net.features(net.prepare(images))).argmax(1) == labels).float().mean())


def reference_images(dataset: str, n: int):
    if dataset == "shapes":
        data = ShapesDataset("test", 32, length=n)
        return [data[i]["image"] for i in range(n)]
    data = DigitsDataset("all", 32)
    return [data[i]["image"] for i in range(len(data))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for dataset in args.datasets:
        start = time.time()
        config = PRESETS[dataset]
        net, loss = train(config)
        accuracy = held_out_accuracy(net, dataset)
        reference = extract(net, reference_images(dataset, config.reference_images)).float()
        save_feature_net(net, weights_path(dataset), reference)
        print(f"{dataset}: final loss {loss:.4f}, held-out accuracy {accuracy:.3f}, {len(reference)} reference "
              f"features, {time.time() - start:.0f} s -> {weights_path(dataset)}")


if __name__ == "__main__":
    main()
