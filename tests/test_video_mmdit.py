"""VideoMMDiT (spacetime patches): identity at init, every frame attends to every other, frame order
is seen (a clip played backwards is not the backwards output), strict package round trip, refusals,
and a tiny training run whose package generates batch-invariant clips."""

import json

import numpy as np
import pytest
import torch

import difflab
from difflab.models import create_model, load
from difflab.models.video_mmdit import frame_code
from test_video_model import TINY_VIDEO, trained_video_package

TINY = dict(in_channels=3, patch_size=4, hidden_size=32, depth=2, num_heads=2, context_dim=24, pooled_dim=24,
            sample_size=16, pos_embed_max_size=8, qk_norm="rms_norm")
TINY_RUN = TINY_VIDEO.split("[model]")[0] + """[model]
class_name = "VideoMMDiT"
patch_size = 4
hidden_size = 32
depth = 2
num_heads = 2
sample_size = 16
pos_embed_max_size = 8
"""


def inputs(frames=6, batch=2):
    torch.manual_seed(0)
    return (torch.randn(batch, 3, frames, 16, 16), torch.tensor([20.0, 800.0][:batch]), torch.randn(batch, 5, 24),
            torch.randn(batch, 24))


def randomised():
    model = create_model("VideoMMDiT", **TINY).eval()
    torch.manual_seed(1)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model


def test_a_new_video_mmdit_outputs_zero_and_its_blocks_are_the_identity():
    model = create_model("VideoMMDiT", **TINY).eval()
    x, t, context, pooled = inputs()
    seen = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, args, out: seen.append((args[0], out[0])))
    with torch.no_grad():
        out = model(x, t, context=context, pooled=pooled)
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))    # adaLN-Zero output layer
    assert len(seen) == 2 and all(torch.equal(a, b) for a, b in seen)        # every block: image stream unchanged


def test_every_frame_sees_every_other_and_the_order_of_frames():
    model = randomised()
    x, t, context, pooled = inputs()
    changed = x.clone()
    changed[:, :, 0] += 1.0                                                   # touch the first frame only
    with torch.no_grad():
        a, b = model(x, t, context=context, pooled=pooled), model(changed, t, context=context, pooled=pooled)
        backwards = model(x.flip(2), t, context=context, pooled=pooled)
    assert (a[:, :, 5] - b[:, :, 5]).abs().max() > 1e-4                      # the last frame sees the first
    assert (backwards - a.flip(2)).abs().max() > 1e-3                        # "moving left" is not "right" reversed
    code = frame_code(8, 32)
    assert code.shape == (8, 32) and torch.equal(code[0, :16], torch.zeros(16)) and torch.equal(code[0, 16:], torch.ones(16))


def test_video_mmdit_package_round_trip_is_strict_and_bad_input_is_refused(tmp_path):
    model = randomised()
    x, t, context, pooled = inputs()
    model.save_pretrained(tmp_path / "m")
    again = load(tmp_path / "m")
    assert type(again).__name__ == "VideoMMDiT" and again.config == model.config
    with torch.no_grad():
        assert torch.equal(model(x, t, context=context, pooled=pooled), again(x, t, context=context, pooled=pooled))
    assert json.loads((tmp_path / "m" / "config.json").read_text())["config"]["max_frames"] == 32
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        model(x[:, :, 0], t, context=context, pooled=pooled)
    with pytest.raises(ValueError, match="max_frames=32"):
        model(torch.zeros(1, 3, 33, 16, 16), t[:1], context=context[:1], pooled=pooled[:1])
    with pytest.raises(ValueError, match="multiples of patch_size=4"):
        model(torch.zeros(1, 3, 4, 18, 16), t[:1], context=context[:1], pooled=pooled[:1])
    with pytest.raises(ValueError, match="max_frames must be a positive integer"):
        create_model("VideoMMDiT", **TINY, max_frames=0)


def test_video_mmdit_training_learns_and_its_package_makes_batch_invariant_clips(tmp_path):
    pipe = difflab.Pipeline.from_pretrained(trained_video_package(tmp_path, TINY_RUN, "VideoMMDiT"))
    prompts = ["a red circle moving right", "a blue square falling"]
    batch = pipe(prompts, seed=[5, 6], steps=4)
    single = pipe(prompts[1], seed=6, steps=4)
    assert batch.videos[0].shape == (8, 16, 16, 3) and batch.videos[0].dtype == np.uint8
    assert np.array_equal(batch.videos[1], single.videos[0])                  # a batch of N equals N single runs
    assert np.array_equal(pipe.replay(batch.recipes[0]).videos[0], batch.videos[0])
