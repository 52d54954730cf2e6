"""DeepCache on difflab's UNet (issue 16, item 3): a cached call reuses the deep feature of the last
full one and recomputes only the shallowest levels; off by default, recorded in recipes."""

import numpy as np
import pytest
import torch

from difflab.models.unet import DeepCacheState, UNet
from difflab.pipelines import Pipeline, read_recipe
from difflab.train import Trainer, preset


def tiny_unet():
    torch.manual_seed(0)
    model = UNet(in_channels=3, out_channels=3, channels=(16, 32, 32), layers_per_block=1, attention_levels=(1,),
                 head_dim=16, norm_groups=8).eval()
    for p in model.parameters():           # the zero-initialised output layer would hide everything
        torch.nn.init.normal_(p, std=0.1)
    return model


def test_a_cached_call_on_the_same_input_equals_the_full_call():
    model, x, t = tiny_unet(), torch.randn(2, 3, 16, 16), torch.tensor([3.0, 700.0])
    state = DeepCacheState(3)
    with torch.no_grad():
        full = model(x, t)
        first, second = model(x, t, deep_cache=state), model(x, t, deep_cache=state)
    assert torch.equal(first, full) and torch.allclose(second, full, atol=1e-6)


def test_cached_calls_follow_the_interval_and_reuse_the_deep_feature():
    model, t = tiny_unet(), torch.tensor([3.0, 700.0])
    xs = [torch.randn(2, 3, 16, 16) for _ in range(4)]
    state = DeepCacheState(2)
    with torch.no_grad():
        outs = [model(x, t, deep_cache=state) for x in xs]
        plain = [model(x, t) for x in xs]
    assert torch.equal(outs[0], plain[0]) and torch.equal(outs[2], plain[2])      # calls 0 and 2 are full
    assert not torch.allclose(outs[1], plain[1]) and not torch.allclose(outs[3], plain[3])
    with torch.no_grad():
        model(xs[0], t, deep_cache=(reference := DeepCacheState(2)))
        assert torch.allclose(model(xs[1], t, deep_cache=reference), outs[1])      # the same deep feature reused
    assert state.calls == 4


def test_a_shape_change_forces_a_full_call_and_bad_intervals_are_refused():
    model, state = tiny_unet(), DeepCacheState(4)
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 16), torch.tensor(5.0), deep_cache=state)
        out = model(torch.randn(1, 3, 32, 32), torch.tensor(5.0), deep_cache=state)      # new shape: full
    assert out.shape == (1, 3, 32, 32) and state.shape == (1, 16, 32, 32)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            DeepCacheState(bad)


def test_pipeline_records_deep_cache_and_replays_it(tmp_path):
    out = tmp_path / "run"
    Trainer(preset("tiny").replace(max_steps=3, checkpoint_every=0, threads=1), out, log=lambda *a: None).fit()
    pipe = Pipeline.from_pretrained(out / "model")
    plain = pipe("a red circle", seed=2, steps=6)
    cached = pipe("a red circle", seed=2, steps=6, deep_cache=2)
    assert cached.recipes[0]["deep_cache"] == 2 and "deep_cache" not in plain.recipes[0]
    again = pipe.replay(read_recipe(cached.save(tmp_path / "png")[0]))
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(cached.images[0]))
    assert np.array_equal(np.asarray(pipe("a red circle", seed=2, steps=6, deep_cache=1).images[0]),
                          np.asarray(plain.images[0]))
