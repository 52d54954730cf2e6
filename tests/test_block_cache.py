"""First-block caching on difflab's transformers (issue 16, item 3): while the first block's residual
changes by less than the threshold from the last full call, the other blocks are skipped and their
residual reused; off by default, recorded in recipes, refused where it does not apply."""

import numpy as np
import pytest
import torch

from difflab.models import DiT
from difflab.models.block_cache import BlockCacheState
from difflab.models.mmdit import MMDiT
from difflab.models.video_mmdit import VideoMMDiT
from difflab.pipelines import Pipeline, read_recipe
from difflab.train import Trainer, preset

TEXT = dict(context=torch.randn(2, 5, 24), pooled=torch.randn(2, 24))


def randomised(model):
    torch.manual_seed(0)
    for p in model.parameters():           # adaLN-Zero starts every block as the identity: give them weights
        torch.nn.init.normal_(p, std=0.1)
    return model.eval()


def networks():
    mmdit = dict(in_channels=3, patch_size=2, hidden_size=32, depth=3, num_heads=2, context_dim=24, pooled_dim=24,
                 sample_size=8, pos_embed_max_size=8)
    return [(randomised(DiT(in_channels=3, hidden_size=32, depth=3, num_heads=2, context_dim=24)), (2, 3, 8, 8),
             {"context": TEXT["context"]}),
            (randomised(MMDiT(**mmdit)), (2, 3, 8, 8), TEXT),
            (randomised(VideoMMDiT(**mmdit)), (2, 3, 4, 8, 8), TEXT)]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["DiT", "MMDiT", "VideoMMDiT"])
def test_a_repeated_call_reuses_the_cache_and_a_new_one_does_not(index):
    model, shape, text = networks()[index]
    x, t = torch.randn(shape), torch.tensor([300.0, 300.0])
    state = BlockCacheState(0.05)
    with torch.no_grad():
        full = model(x, t, **text)
        first = model(x, t, block_cache=state, **text)
        again = model(x, t, block_cache=state, **text)                 # the same input: reused
        assert (state.full_calls, state.cached_calls) == (1, 1)
        other = model(x.flip(-1) * 3, torch.tensor([900.0, 900.0]), block_cache=state, **text)   # far away: full
        plain_other = model(x.flip(-1) * 3, torch.tensor([900.0, 900.0]), **text)
    assert torch.equal(first, full) and torch.allclose(again, full, atol=1e-5)
    assert (state.full_calls, state.cached_calls) == (2, 1) and torch.equal(other, plain_other)


class AddStored(torch.nn.Module):
    """Stands in for an MMDiT's blocks after the first: adds a fixed residual to the image tokens."""

    def __init__(self, residual):
        super().__init__()
        self.residual = residual

    def forward(self, tokens, text, c, mask):
        return tokens + self.residual, text


def test_a_cached_call_is_the_first_block_plus_the_stored_residual():
    model, shape, text = networks()[1]
    x, t = torch.randn(shape), torch.tensor([300.0, 300.0])
    state = BlockCacheState(1.0)                                       # every call after the first reuses
    with torch.no_grad():
        model(x, t, block_cache=state, **text)
        stored = state.rest.clone()
        nearby = x + 0.01 * torch.randn(shape)
        cached = model(nearby, t, block_cache=state, **text)
        model.blocks = torch.nn.ModuleList([model.blocks[0], AddStored(stored)])
        reference = model(nearby, t, **text)                           # block 1, then the stored residual
    assert state.cached_calls == 1 and torch.equal(state.rest, stored)   # a cached call leaves the cache alone
    assert stored.abs().mean() > 1e-3 and torch.allclose(cached, reference, atol=1e-6)


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), True, "0.1"])
def test_bad_thresholds_are_refused(bad):
    with pytest.raises(ValueError, match=r"block_cache must be a number in \(0, 1\]"):
        BlockCacheState(bad)


def test_pipeline_records_block_cache_replays_it_and_skips_evaluations(tmp_path):
    model = dict(class_name="MMDiT", patch_size=2, hidden_size=32, depth=3, num_heads=2, sample_size=8,
                 pos_embed_max_size=8)
    out = tmp_path / "run"
    Trainer(preset("tiny").replace(resolution=16, model=model, max_steps=3, checkpoint_every=0, threads=1), out,
            log=lambda *a: None).fit()
    pipe = Pipeline.from_pretrained(out / "model")
    randomised(pipe.model)
    plain = pipe("a red circle", seed=2, steps=8)
    calls = []
    original = BlockCacheState.store
    BlockCacheState.store = lambda self, first, rest: (calls.append(1), original(self, first, rest))[1]
    try:
        cached = pipe("a red circle", seed=2, steps=8, block_cache=1.0)
    finally:
        BlockCacheState.store = original
    assert cached.recipes[0]["block_cache"] == 1.0 and "block_cache" not in plain.recipes[0]
    assert 1 <= len(calls) < 8                                         # some evaluations skipped the blocks
    again = pipe.replay(read_recipe(cached.save(tmp_path / "png")[0]))
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(cached.images[0]))
    tiny = pipe("a red circle", seed=2, steps=8, block_cache=1e-9)    # never reused: the plain images
    assert np.array_equal(np.asarray(tiny.images[0]), np.asarray(plain.images[0]))
    with pytest.raises(ValueError, match="choose one cache"):
        pipe("a red circle", deep_cache=2, block_cache=0.1)
    with pytest.raises(ValueError, match="deep_cache is for difflab's UNet"):
        pipe("a red circle", deep_cache=2)


def test_block_cache_is_refused_on_a_unet():
    pipe = Pipeline.from_pretrained("shapes")
    with pytest.raises(ValueError, match="block_cache is for difflab's transformers"):
        pipe("a red circle", block_cache=0.1)
