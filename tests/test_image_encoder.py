"""The shapes object encoder of image prompts (difflab.train.image_encoder): its targets, its training,
and what the shipped weights know about a scene's objects wherever they lie."""


import numpy as np
import torch

from difflab.data.shapes import Scene, ShapeObject, render_scene, scene_for
from difflab.models.image_encoders import DEFAULT_IMAGE_ENCODER, IMAGE_ENCODERS, MAX_SLOTS, image_encoder, object_images
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
    assert DEFAULT_IMAGE_ENCODER == "shapes-objects" and set(IMAGE_ENCODERS) == {"shapes", "shapes-objects", "shapes-slots"}
    images = [render_scene(scene_for("a red circle and a blue square", seed)) for seed in range(4)]
    features = encoder(images)
    assert features.shape == (4, encoder.feature_dim) == (4, 128) and torch.isfinite(features).all()
    # a tensor and the PIL images it came from give the same features
    pixels = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images]).float() / 127.5 - 1
    assert torch.allclose(encoder(pixels), features, atol=1e-5)
    # its head names the exact set of colour-shape pairs in most fresh scenes (the FID network's: 3%)
    rates = trainer.held_out(encoder.net, n=300)
    assert rates["pairs"] >= 0.8, rates


def test_slots_hold_a_null_slot_then_one_object_each_in_reading_order_and_zero_past_the_last():
    slots_of, pooled_of = image_encoder("shapes-slots", grid=True), image_encoder("shapes-objects")
    assert slots_of.grid_tokens == 1 + MAX_SLOTS == 5
    red_cross = ShapeObject("cross", "red", "large", (0, 0))
    blue_square = ShapeObject("square", "blue", "small", (2, 2))
    both, swapped = (render_scene(Scene(pair, "white", "")) for pair in (
        (red_cross, blue_square), (ShapeObject("cross", "blue", "large", (0, 0)), ShapeObject("square", "red", "small", (2, 2)))))
    alone = [render_scene(Scene((obj,), "white", "")) for obj in (red_cross, blue_square)]
    slots = slots_of([both, swapped])
    assert slots.shape == (2, 5, 128)
    assert slots[:, 0].abs().max() == 0                                              # the null slot
    # each slot is the encoder's feature of its object drawn alone, the top-left cross before the square
    assert torch.allclose(slots[0, 1:3], pooled_of(alone), atol=1e-3)
    # reading order, not size: the small square first when it lies in an upper row, or in the row further left
    for square_cell, cross_cell in (((0, 2), (1, 0)), ((1, 0), (1, 2))):
        cross = ShapeObject("cross", "red", "large", cross_cell)
        square = ShapeObject("square", "blue", "small", square_cell)
        moved = render_scene(Scene((cross, square), "white", ""))
        each = [render_scene(Scene((obj,), "white", "")) for obj in (square, cross)]
        assert torch.allclose(slots_of([moved])[0, 1:3], pooled_of(each), atol=1e-3)
    assert slots[:, 3:].abs().max() == 0                                             # two objects: two slots
    # the colours swapped between the shapes: each slot moves as far as a colour change moves an object
    assert (slots[0, 1] - slots[1, 1]).norm() > 5 and (slots[0, 2] - slots[1, 2]).norm() > 5
    three = render_scene(scene_for("three green triangles", 1))
    blank = render_scene(Scene((), "gray", ""))
    counted = slots_of([three, blank])
    assert (counted[0, 1:].abs().sum(-1) > 0).tolist() == [True, True, True, False]
    assert counted[1].abs().max() == 0                                               # no object: nothing at all
    # a float tensor gives what its pixels give; the pooled reading is shapes-objects'
    pixels = torch.from_numpy(np.array(both)).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert torch.allclose(slots_of(pixels), slots[:1], atol=1e-4)
    assert torch.allclose(image_encoder("shapes-slots")([both]), pooled_of([both]))


def test_object_images_keep_each_object_on_its_background_and_the_largest_when_there_are_more():
    objects = (ShapeObject("circle", "red", "small", (0, 0)), ShapeObject("square", "green", "large", (1, 1)),
               ShapeObject("cross", "blue", "small", (2, 2)))
    picture = torch.from_numpy(np.array(render_scene(Scene(objects, "black", "")))).permute(2, 0, 1)
    alone = object_images(picture)
    assert len(alone) == 3 and all(a.dtype == torch.uint8 and a.shape == picture.shape for a in alone)
    background = (picture.sum(0) == 0)                                               # black ground
    green = lambda a: bool(((a[1] > 100) & (a[0] < 100)).any())                     # holds the green square
    assert [green(a) for a in alone] == [False, True, False]                         # reading order: row by row
    assert int((alone[1].sum(0) > 0).sum()) > int((alone[0].sum(0) > 0).sum())       # the square is the largest
    covered = sum((a.sum(0) > 0).int() for a in alone)
    assert covered.max() == 1 and torch.equal(covered.bool(), ~background)          # each pixel in one picture
    for a in alone:                                                                  # an object's own pixels, as drawn
        mine = a.sum(0) > 0
        assert torch.equal(a[:, mine], picture[:, mine])
    largest = object_images(picture, limit=1)                                        # past the limit: the largest
    assert len(largest) == 1 and torch.equal(largest[0], alone[1])
    two = object_images(picture, limit=2)                                            # the two largest, in reading order
    assert len(two) == 2 and torch.equal(two[1], alone[1]) and sum(map(green, two)) == 1
