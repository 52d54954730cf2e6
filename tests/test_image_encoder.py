"""The shapes object encoder of image prompts (difflab.train.image_encoder): its targets, its training,
and what the shipped weights know about a scene's objects wherever they lie."""


import numpy as np
import torch

from difflab.data.shapes import Scene, ShapeObject, render_scene, scene_for
from difflab.models.image_encoders import DEFAULT_IMAGE_ENCODER, IMAGE_ENCODERS, image_encoder
from difflab.train import image_encoder as trainer


def test_targets_name_each_pair_with_its_count_the_sizes_and_the_background():
    scene = Scene((ShapeObject("circle", "red", "small", (0, 0)), ShapeObject("circle", "red", "large", (1, 1)),
                   ShapeObject("square", "blue", "small", (2, 2))), "gray", "")
    target = trainer.object_targets(scene)
    assert target.shape == (trainer.NUM_TARGETS,)
    pairs = target[:len(trainer.PAIRS) * 3].reshape(len(trainer.PAIRS), 3)
    red_circle, blue_square = trainer.PAIRS.index(("red", "circle")), trainer.PAIRS.index(("blue", "square"))
    assert pairs[red_circle].tolist() == [1, 1, 0] and pairs[blue_square].tolist() == [1, 0, 0]
    assert pairs.sum() == 3
    assert target[-5:].tolist() == [1, 1, 0, 0, 1]     # small, large; white, black, gray


def test_a_short_run_learns_and_returns_a_frozen_network():
    losses = []
    net = trainer.train(steps=40, batch_size=16, log=lambda line: losses.append(float(line.split()[-1])))
    assert losses[-1] < 0.5 * losses[0]
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_the_shipped_encoder_names_the_objects_wherever_they_lie():
    encoder = image_encoder(DEFAULT_IMAGE_ENCODER)
    assert DEFAULT_IMAGE_ENCODER == "shapes-objects" and set(IMAGE_ENCODERS) == {"shapes", "shapes-objects"}
    images = [render_scene(scene_for("a red circle and a blue square", seed)) for seed in range(4)]
    features = encoder(images)
    assert features.shape == (4, encoder.feature_dim) == (4, 128) and torch.isfinite(features).all()
    # a tensor and the PIL images it came from give the same features
    pixels = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images]).float() / 127.5 - 1
    assert torch.allclose(encoder(pixels), features, atol=1e-5)
    # its head names the exact set of colour-shape pairs in most fresh scenes (the FID network's: 3%)
    rates = trainer.held_out(encoder.net, n=300)
    assert rates["pairs"] >= 0.8, rates
