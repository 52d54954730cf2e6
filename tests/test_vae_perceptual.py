"""The VAE's optional perceptual term: a distance in the shapes-objects encoder (issue 13)."""

import pytest
import torch
import torch.nn.functional as F

from difflab.data import to_tensor
from difflab.data.shapes import render
from difflab.train import Trainer, TrainConfig
from difflab.train.objectives.reconstruction import objects_distance
from test_train import held_out_loss
from test_train_latent import QUIET, VAE_RUN


def image(prompt: str, seed: int) -> torch.Tensor:
    x = to_tensor(render(prompt, seed=seed, resolution=64))
    return x if x.dim() == 4 else x.unsqueeze(0)                            # [1, 3, 64, 64] in [-1, 1]


@pytest.fixture(scope="module")
def distance():
    return objects_distance()


def test_the_distance_sees_a_cross_become_a_circle_where_l1_sees_less_than_a_blur(distance):
    cross, circle = image("a small red cross", 0), image("a small red circle", 0)
    blurred = F.avg_pool2d(cross, 3, 1, 1)
    assert distance(cross, cross).item() == 0
    # pixel L1 rates the wrong shape as closer than a 3x3 blur of the right one; the distance does not
    assert (cross - circle).abs().mean() < (cross - blurred).abs().mean()
    assert distance(cross, circle).item() > 5 * distance(cross, blurred).item()


def test_the_distance_is_differentiable_through_the_resize(distance):
    x = image("a large blue square", 3).repeat(2, 1, 1, 1)
    y = (x + 0.1 * torch.randn_like(x)).requires_grad_()
    d = distance(y, x)
    assert d.shape == (2,) and (d > 0).all()
    d.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in distance.parameters())           # the encoder stays frozen


def test_perceptual_weight_is_checked_before_any_compute():
    with pytest.raises(ValueError, match="perceptual_weight"):
        TrainConfig(task="vae", perceptual_weight=-1.0)
    with pytest.raises(ValueError, match="perceptual_weight"):
        TrainConfig(perceptual_weight=1.0)                                  # a denoiser has no reconstruction
    with pytest.raises(ValueError, match="needs RGB"):
        Trainer(VAE_RUN.replace(dataset="digits", perceptual_weight=1.0), "unused", **QUIET)


def test_a_vae_trained_with_the_perceptual_term_lowers_it(tmp_path):
    config = VAE_RUN.replace(resolution=32, perceptual_weight=1.0, max_steps=30)
    trainer = Trainer(config, tmp_path, **QUIET)
    positions = list(range(10**6, 10**6 + 16))                             # never trained on
    before = held_out_loss(trainer, positions)
    for _ in range(30):
        trainer.train_step()
    after = held_out_loss(trainer, positions)
    assert after < 0.7 * before
    assert trainer.objective.distance is not None
