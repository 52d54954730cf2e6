"""IP-Adapter on difflab's UNet (Ye et al. 2023): the decoupled cross-attention equals its formula computed
by hand from the layer's weights, a fresh or removed adapter changes nothing, CFG batches get the tokens
of their prompts, the adapter is a package; the shapes image encoder and the reference-image pairs."""

import math

import pytest
import torch

from difflab.data.images import to_tensor
from difflab.data.shapes import ShapesDataset, render, render_scene
from difflab.data.shapes_grammar import parse_prompt
from difflab.guidance import merge_batches
from difflab.models.image_encoders import ShapesImageEncoder, image_encoder
from difflab.models.ip_adapter import IPAdapter, IPAdapterConfig, attached, cross_attention_layers
from difflab.models.package import load_package
from difflab.models.unet import UNet
from difflab.train.ip_pairs import pinned_prompt, reference_image, reference_scene

FEATURES = 24


def tiny_unet(context_dim=48, channels=(32, 32)):
    torch.manual_seed(0)
    unet = UNet(in_channels=3, out_channels=3, channels=channels, layers_per_block=1, attention_levels=(1,),
                head_dim=16, context_dim=context_dim, pooled_dim=48)
    torch.nn.init.normal_(unet.conv_out.weight, std=0.1)                  # a zero output layer would hide everything
    return unet.eval()


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def trained_adapter(unet, seed=1):
    """An adapter whose weights moved away from their initialisation (as training would)."""
    adapter = IPAdapter.from_unet(unet, feature_dim=FEATURES)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return adapter.eval()


def inputs(batch=2, length=5):
    torch.manual_seed(2)
    return (torch.randn(batch, 3, 16, 16), torch.tensor([700.0, 20.0, 400.0, 900.0][:batch]),
            torch.randn(batch, length, 48), torch.randn(batch, 48))


def run(unet, x, t, context, pooled, **kw):
    with torch.no_grad():
        return unet(x, t, context=context, pooled=pooled, **kw)


def test_a_fresh_adapter_at_scale_0_zero_tokens_or_removed_changes_nothing(unet):
    x, t, context, pooled = inputs()
    plain = run(unet, x, t, context, pooled)
    adapter = IPAdapter.from_unet(unet, feature_dim=FEATURES)
    for name, block in cross_attention_layers(unet):                     # W'_k, W'_v start as W_k, W_v
        kv_ip = adapter.to_kv_ip[[n for n, _ in adapter.config.layers].index(name)]
        assert torch.equal(kv_ip.weight, block.cross.to_kv.weight) and kv_ip.bias is None
    tokens = adapter.image_tokens(torch.randn(2, FEATURES))
    with attached(unet, adapter, tokens, scale=0.0):
        assert torch.equal(run(unet, x, t, context, pooled), plain)
    with attached(unet, adapter, torch.zeros_like(tokens), scale=1.0):
        assert torch.equal(run(unet, x, t, context, pooled), plain)
    with attached(unet, adapter, tokens, scale=1.0):
        assert not torch.allclose(run(unet, x, t, context, pooled), plain, atol=1e-4)   # it does act
    assert all(not block.cross._forward_hooks for _, block in cross_attention_layers(unet))
    assert torch.equal(run(unet, x, t, context, pooled), plain)


def by_hand(cross, x, context, tokens, kv_ip_weight, scale):
    """W_out (Attention(Q, K, V) + scale Attention(Q, K', V')) + b_out, heads split by hand."""
    C, heads = x.shape[-1], cross.heads
    d = C // heads

    def attend(q, k, v):                                                  # [B, N, C], [B, L, C] x2 -> [B, N, C]
        split = lambda z: z.reshape(z.shape[0], z.shape[1], heads, d).transpose(1, 2)
        q, k, v = split(q), split(k), split(v)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        return (weights @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], C)

    q = x @ cross.to_q.weight.T + cross.to_q.bias
    kv = context @ cross.to_kv.weight.T + cross.to_kv.bias
    kv_ip = tokens @ kv_ip_weight.T
    z = attend(q, kv[..., :C], kv[..., C:]) + scale * attend(q, kv_ip[..., :C], kv_ip[..., C:])
    return z @ cross.to_out.weight.T + cross.to_out.bias


@pytest.mark.parametrize("scale", [1.0, 0.6])
def test_the_hooked_cross_attention_is_the_decoupled_formula(unet, scale):
    adapter = trained_adapter(unet)
    torch.manual_seed(3)
    x, context = torch.randn(2, 64, 32), torch.randn(2, 5, 48)
    tokens = adapter.image_tokens(torch.randn(2, FEATURES))
    with torch.no_grad():
        for i, (_, block) in enumerate(cross_attention_layers(unet)):
            assert block.cross.heads == 2
            expected = by_hand(block.cross, x, context, tokens, adapter.to_kv_ip[i].weight, scale)
            with attached(unet, adapter, tokens, scale=scale):
                hooked = block.cross(x, context)
            assert (hooked - expected).abs().max() < 1e-5
            assert not torch.allclose(block.cross(x, context), expected, atol=1e-3)   # removed again


def test_grid_features_keep_each_object_in_its_cells_and_a_grid_adapter_reads_a_token_per_cell(unet, tmp_path):
    cells_of, pooled_of = image_encoder("shapes-objects", grid=True), image_encoder("shapes-objects")
    for corner, (row, col), far in (("top left", (0, 0), (3, 3)), ("bottom right", (3, 3), (0, 0))):
        red, blue = (render(f"a large {colour} circle in the {corner}", 1) for colour in ("red", "blue"))
        cells = cells_of([red, blue])
        assert cells_of.grid_tokens == 16 and cells.shape == (2, 16, 128)
        assert torch.allclose(cells.mean(1), pooled_of([red, blue]), atol=1e-4)    # their mean is the pooled feature
        change = (cells[0] - cells[1]).norm(dim=-1).reshape(4, 4)
        assert change[row, col] > 5 * change[far], change                         # the colour changed where it lies
    adapter = IPAdapter.from_unet(unet, FEATURES, num_tokens=16, grid=True)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.3 * torch.randn_like(p))                                     # moved, as training would
    one = torch.randn(2, 1, FEATURES).expand(-1, 16, -1)                          # the same feature in every cell
    tokens = adapter.image_tokens(one)
    assert tokens.shape == (2, 16, 48) and (tokens[:, 0] - tokens[:, 1]).abs().max() > 0.1   # tokens know their cell
    x, context = torch.randn(2, 64, 32), torch.randn(2, 5, 48)
    with torch.no_grad():
        for i, (_, block) in enumerate(cross_attention_layers(unet)):
            expected = by_hand(block.cross, x, context, tokens, adapter.to_kv_ip[i].weight, 1.0)
            with attached(unet, adapter, tokens, scale=1.0):
                assert (block.cross(x, context) - expected).abs().max() < 1e-5
    with pytest.raises(ValueError, match=r"image features must be a tensor \[B, 16, 24\] \(its cell features\)"):
        adapter.image_tokens(torch.randn(2, FEATURES))
    adapter.save_pretrained(tmp_path / "grid")
    loaded = load_package(tmp_path / "grid").model
    assert loaded.config == adapter.config and loaded.config.grid and loaded.config.num_tokens == 16
    assert torch.equal(loaded.image_tokens(one), tokens)


def test_a_cfg_batch_of_2b_with_tokens_for_b_equals_the_halves(unet):
    adapter = trained_adapter(unet)
    x, t, context, pooled = inputs(batch=2, length=5)
    uncond = {"context": torch.randn(2, 3, 48), "context_mask": torch.tensor([[True, True, False], [True] * 3]),
              "pooled": torch.randn(2, 48)}
    cond = {"context": context, "context_mask": torch.ones(2, 5, dtype=torch.bool), "pooled": pooled}
    tokens = adapter.image_tokens(torch.randn(2, FEATURES))
    with attached(unet, adapter, tokens, scale=0.8), torch.no_grad():
        both = unet(torch.cat([x, x]), torch.cat([t, t]), **merge_batches(cond, uncond))
        halves = torch.cat([unet(x, t, **cond), unet(x, t, **uncond)])
    assert torch.allclose(both, halves, atol=1e-5)
    with attached(unet, adapter, tokens[:1].expand(2, -1, -1), scale=0.8), torch.no_grad():
        each = unet(x, t, **cond)
    with attached(unet, adapter, tokens[:1], scale=0.8), torch.no_grad():   # one image prompt for the batch
        assert torch.equal(unet(x, t, **cond), each)


def test_the_adapter_saves_and_loads_as_a_package(unet, tmp_path):
    adapter = trained_adapter(unet)
    adapter.save_pretrained(tmp_path / "ip")
    loaded = load_package(tmp_path / "ip").model
    assert type(loaded) is IPAdapter and loaded.config == adapter.config and loaded.steers(unet)
    assert loaded.config.image_encoder == "shapes" and loaded.config.layers[0] == ("down.1.0.1", 32)
    assert IPAdapter.from_pretrained(tmp_path / "ip").config.layers == adapter.config.layers
    x, t, context, pooled = inputs()
    features = torch.randn(2, FEATURES)
    outputs = []
    for a in (adapter, loaded.eval()):
        with torch.no_grad(), attached(unet, a, a.image_tokens(features), scale=1.0):
            outputs.append(unet(x, t, context=context, pooled=pooled))
    assert torch.equal(*outputs)


def test_an_own_query_starts_as_the_shared_one_then_is_its_own_and_saves(unet, tmp_path):
    shared = trained_adapter(unet)
    own = IPAdapter.from_unet(unet, feature_dim=FEATURES, own_query=True)
    own.load_state_dict(shared.state_dict(), strict=False)                  # all but to_q_ip, which is W_q
    crosses = [block.cross for _, block in cross_attention_layers(unet)]
    assert len(own.to_q_ip) == len(crosses) == len(shared.to_kv_ip)
    assert all(torch.equal(q.weight, c.to_q.weight) and torch.equal(q.bias, c.to_q.bias)
               for q, c in zip(own.to_q_ip, crosses))
    x, t, context, pooled = inputs()
    tokens = shared.image_tokens(torch.randn(2, FEATURES))
    outputs = []
    for adapter in (shared, own):
        with attached(unet, adapter, tokens, scale=1.5):
            outputs.append(run(unet, x, t, context, pooled))
    assert torch.equal(*outputs)                                          # the same query: the same image branch
    with torch.no_grad():
        own.to_q_ip[0].weight.mul_(-1.0)
    with attached(unet, own, tokens, scale=1.5):
        moved = run(unet, x, t, context, pooled)
    assert (moved - outputs[0]).abs().max() > 1e-3                        # the image branch reads its own W'_q
    assert not hasattr(shared, "to_q_ip")                                 # a shared-query adapter has none
    own.save_pretrained(tmp_path / "own")
    loaded = load_package(tmp_path / "own").model.eval()
    assert loaded.config.own_query and loaded.config == own.config
    with attached(unet, loaded, tokens, scale=1.5):
        assert torch.equal(run(unet, x, t, context, pooled), moved)
    with pytest.raises(ValueError, match="own_query must be true or false"):
        IPAdapterConfig(FEATURES, 48, layers=own.config.layers, own_query="yes")


def test_the_shapes_encoder_gives_the_same_features_for_pil_and_tensors():
    encoder = image_encoder("shapes")
    assert isinstance(encoder, ShapesImageEncoder)
    images = [render("a red circle", 0), render("two blue squares on a white background", 1),
              render("a green triangle above a yellow cross", 2)]
    pil, tensor = encoder(images), encoder(to_tensor(images))
    assert encoder.feature_dim == 64 and pil.shape == (3, 64) and pil.dtype == torch.float32
    assert torch.equal(pil, tensor) and torch.isfinite(pil).all()
    assert (pil[0] - pil[1]).abs().max() > 0.1                            # different scenes, different features
    assert torch.allclose(encoder(images[0]), pil[:1], atol=1e-5)         # one PIL image (batch size: rounding)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        encoder(torch.zeros(2, 32, 32))
    with pytest.raises(ValueError, match="unknown image encoder 'clip'; available: shapes"):
        image_encoder("clip")


def test_a_reference_image_is_another_render_of_the_same_objects():
    data, unplaced = ShapesDataset("train", length=40), 0
    for index in range(40):
        item = data[index]
        image = reference_image(item, 32, seed=5, index=index)
        assert image.tobytes() == reference_image(item, 32, seed=5, index=index).tobytes()   # deterministic
        assert image.tobytes() != item["image"].tobytes()
        assert image.tobytes() != reference_image(item, 32, seed=6, index=index).tobytes()
        scene, own = reference_scene(item, 5, index), item["scene"]
        assert image.tobytes() == render_scene(scene, 32).tobytes()
        assert sorted((o.shape, o.colour) for o in scene.objects) == sorted((o.shape, o.colour) for o in own.objects)
        assert scene.background == own.background
        spec = parse_prompt(item["prompt"])
        for named, drawn in zip(spec.objects, scene.objects):                # what the prompt fixes stays fixed
            assert named.shape == drawn.shape and named.size in (None, drawn.size) and named.cell in (None, drawn.cell)
        assert parse_prompt(pinned_prompt(item)).kind == spec.kind
    more = ShapesDataset("train", length=200)
    for index in range(200):    # an unplaced pair ("X and Y") is drawn in the words' order: X first in reading order
        item = more[index]
        spec = parse_prompt(item["prompt"])
        if spec.kind == "and" and not any(named.cell for named in spec.objects):
            unplaced += 1
            first, second = reference_scene(item, 5, index).objects
            assert (first.shape, first.colour) == (spec.objects[0].shape, item["scene"].objects[0].colour)
            assert first.cell < second.cell                                   # (row, column): reading order
    assert unplaced >= 5
    assert reference_image(data[0], 32, 5, 0).tobytes() != reference_image(data[0], 32, 5, 1).tobytes()


def test_bad_input_is_refused(unet):
    adapter = IPAdapter.from_unet(unet, feature_dim=FEATURES)
    x, t, context, pooled = inputs()
    with pytest.raises(ValueError, match=r"image tokens must be a float tensor \[B, 4, 48\]"):
        with attached(unet, adapter, torch.zeros(2, 4, 32)):
            pass
    with pytest.raises(ValueError, match=r"image features must be a tensor \[B, 24\]"):
        adapter.image_tokens(torch.zeros(2, 64))
    for other in (tiny_unet(context_dim=32), tiny_unet(channels=(32, 64))):
        assert not adapter.steers(other)
        with pytest.raises(ValueError, match="made for another network"):
            with attached(other, adapter, torch.zeros(2, 4, 48)):
                pass
    assert adapter.steers(unet) and not adapter.steers(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="cannot cover a UNet batch of 2"):
        with attached(unet, adapter, torch.zeros(3, 4, 48)):
            run(unet, x, t, context, pooled)
    with pytest.raises(ValueError, match="scale must be a finite number"):
        with attached(unet, adapter, torch.zeros(2, 4, 48), scale=float("nan")):
            pass
    with pytest.raises(ValueError, match="no cross-attention"):
        IPAdapter.from_unet(UNet(in_channels=3, out_channels=3, channels=(32, 32), layers_per_block=1), FEATURES)
    with pytest.raises(ValueError, match="shapes items"):
        reference_image({"image": None, "caption": "", "label": 3}, 32)
    with pytest.raises(ValueError, match="shapes items"):
        reference_image({"audio": None, "caption": "a tone", "prompt": "a tone", "sound": None}, 32)
    assert all(not block.cross._forward_hooks for _, block in cross_attention_layers(unet))
