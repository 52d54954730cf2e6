"""The context refiner (models/context_refiner.py): trainable layers over the text tokens before the UNet's
cross-attention. Grown from a package it starts as the identity; then it mixes tokens, never padding; the
grown network trains from the package, and its own package loads strictly and generates."""

import pytest
import torch

import difflab
from difflab.models import create_model
from difflab.train import Trainer, preset

TINY = dict(in_channels=3, out_channels=3, channels=(32, 64), layers_per_block=1, attention_levels=(1,),
            head_dim=32, context_dim=384, pooled_dim=384)


def test_a_grown_refiner_starts_as_the_identity_then_mixes_tokens_but_never_padding():
    torch.manual_seed(0)
    plain = create_model("UNet", **TINY).eval()
    for p in plain.parameters():                                       # a trained-like network, no zero layer
        torch.nn.init.normal_(p, std=0.05)
    grown = create_model("UNet", **TINY, context_layers=2).eval()
    missing = grown.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("context_refiner.") and grown.identity_at_init(k) for k in missing)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([900.0, 300.0])
    context, pooled = torch.randn(2, 6, 384), torch.randn(2, 384)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]])
    with torch.no_grad():
        assert torch.equal(grown(x, t, context=context, context_mask=mask, pooled=pooled),
                           plain(x, t, context=context, context_mask=mask, pooled=pooled))
        torch.nn.init.normal_(grown.context_refiner.up.weight, std=0.2)
        refiner = grown.context_refiner
        other, padding = context.clone(), context.clone()
        other[:, 2] += 1.0                                             # one prompt token changed
        padding[0, 4:] += 5.0                                          # the first prompt's padding changed
        a, b, c = (refiner(ctx, mask) for ctx in (context, other, padding))
        assert (a[:, 0] - b[:, 0]).abs().max() > 1e-3                  # token 0 now reads token 2
        torch.testing.assert_close(a[0, :4], c[0, :4])                 # no valid token reads padding
        assert (grown(x, t, context=context, context_mask=mask, pooled=pooled)
                - plain(x, t, context=context, context_mask=mask, pooled=pooled)).abs().max() > 1e-4
    with pytest.raises(ValueError, match="context_layers needs a context_dim"):
        create_model("UNet", **{**TINY, "context_dim": None}, context_layers=1)
    with pytest.raises(ValueError, match="context_width must be a positive multiple of 32"):
        create_model("UNet", **TINY, context_layers=1, context_width=48)


def test_a_network_grown_with_a_refiner_trains_from_its_package_and_reloads_strictly(tmp_path):
    base = Trainer(preset("tiny").replace(max_steps=2, checkpoint_every=0, threads=1), tmp_path / "base",
                   log=lambda *a: None).fit()
    config = preset("tiny").replace(max_steps=3, checkpoint_every=0, threads=1, init_from=str(base))
    config = config.replace(model={**config.model, "context_layers": 1})
    trainer = Trainer(config, tmp_path / "grown", log=lambda *a: None)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    package = trainer.fit()
    changed = {k for k, v in trainer.model.state_dict().items() if not torch.equal(before[k], v)}
    assert any(k.startswith("context_refiner.up.") for k in changed)  # the zero layer learns
    pipe = difflab.Pipeline.from_pretrained(package)
    assert pipe.model.config.context_layers == 1 and pipe.model.context_refiner is not None
    again = pipe("a red circle above a blue square", seed=1, steps=3)
    assert again.recipes[0]["seed"] == 1 and again.images[0].size == (pipe.resolution, pipe.resolution)
