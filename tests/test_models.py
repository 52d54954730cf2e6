"""Networks: shapes, conditioning, null class, zero-init and gradients of UNet, DiT and AutoencoderKL."""

import pytest
import torch
import torch.nn.functional as F

from difflab.models import DIT_SIZES, AutoencoderKL, DiT, UNet
from difflab.models.dit import sincos_positions_2d
from difflab.models.layers import Upsample, fourier_positions_2d, group_norm

torch.set_num_threads(2)
TINY = dict(channels=(8, 16), norm_groups=4, head_dim=8)


def randomize_zero_init(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every all-zero parameter (zero-initialised outputs and gates) random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def assert_every_parameter_gets_gradient(model, out):
    out.square().mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"


# --- shared layers ------------------------------------------------------------------------------

@pytest.mark.parametrize("act", [False, True])
def test_group_norm_matches_torch_in_value_and_gradient(act):
    torch.manual_seed(0)
    x = torch.randn(3, 12, 5, 4, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    norm = torch.nn.GroupNorm(4, 12).double()
    torch.nn.init.normal_(norm.weight), torch.nn.init.normal_(norm.bias)
    scale, shift = (torch.randn(3, 12, dtype=torch.float64, requires_grad=True) for _ in range(2))
    ref = F.group_norm(x, 4, norm.weight, norm.bias) * (1 + scale[..., None, None]) + shift[..., None, None]
    ref = F.silu(ref) if act else ref
    ours = group_norm(x, norm, scale, shift, act=act)
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ref)
    inputs = [x, scale, shift, norm.weight, norm.bias]
    for a, b in zip(torch.autograd.grad(ours, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(a, b)


def test_upsample_equals_nearest_then_conv():
    up = Upsample(6).double()
    x = torch.randn(2, 6, 5, 3, dtype=torch.float64, requires_grad=True)
    ref = up.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    torch.testing.assert_close(up(x), ref)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(up(x), [x, up.conv.weight], g), torch.autograd.grad(ref, [x, up.conv.weight], g)):
        torch.testing.assert_close(a, b)


# --- UNet ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, shape", [
    (dict(in_channels=1, out_channels=1, **TINY), (2, 1, 8, 8)),
    (dict(in_channels=3, out_channels=6, **TINY, attention_levels=(0, 1)), (1, 3, 12, 20)),
    (dict(in_channels=2, out_channels=2, channels=(8, 8, 16), norm_groups=8, layers_per_block=1, head_dim=4,
          attention_levels=(), mid_attention=False), (3, 2, 16, 8)),
    (dict(in_channels=4, out_channels=4, **TINY, context_dim=6, num_classes=3, pooled_dim=5), (2, 4, 4, 4)),
])
def test_unet_output_shape(kwargs, shape):
    model = UNet(**kwargs)
    out = model(torch.randn(shape), torch.rand(shape[0]) * 999)
    assert out.shape == (shape[0], kwargs["out_channels"], *shape[2:])


def test_unet_output_layer_is_zero_initialised():
    model = UNet(3, 3, **TINY)
    assert torch.equal(model(torch.randn(2, 3, 8, 8), torch.tensor([3.0, 700.0])), torch.zeros(2, 3, 8, 8))


def test_unet_time_can_be_scalar_0dim_or_per_sample():
    model = randomize_zero_init(UNet(3, 3, **TINY)).eval()
    x = torch.randn(2, 3, 8, 8)
    ref = model(x, torch.tensor([250.5, 250.5]))
    for t in (250.5, torch.tensor(250.5), torch.tensor([250.5])):
        torch.testing.assert_close(model(x, t), ref)
    with pytest.raises(ValueError, match="shape"):
        model(x, torch.ones(3))


def test_unet_batch_equals_single_runs_and_layout_does_not_matter():
    model = randomize_zero_init(UNet(3, 3, **TINY, context_dim=6)).eval()
    x, t, ctx = torch.randn(3, 3, 8, 8), torch.tensor([1.0, 400.0, 999.0]), torch.randn(3, 4, 6)
    batch = model(x, t, context=ctx)
    singles = torch.cat([model(x[i:i + 1], t[i:i + 1], context=ctx[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, singles, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last), t, context=ctx), batch)


def test_unet_conditioning_changes_output():
    model = randomize_zero_init(UNet(3, 3, **TINY, context_dim=6, num_classes=4, pooled_dim=5)).eval()
    x, ctx, pooled = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 6), torch.randn(1, 5)
    base = model(x, 10.0, context=ctx, class_labels=[1], pooled=pooled)
    for changed in (model(x, 500.0, context=ctx, class_labels=[1], pooled=pooled),
                    model(x, 10.0, context=ctx + 1, class_labels=[1], pooled=pooled),
                    model(x, 10.0, context=ctx, class_labels=[2], pooled=pooled),
                    model(x, 10.0, context=ctx, class_labels=[1], pooled=pooled + 1)):
        assert (changed - base).abs().max() > 1e-4


def test_unet_context_mask_hides_padding_tokens():
    model = randomize_zero_init(UNet(3, 3, **TINY, context_dim=6)).eval()
    x, ctx = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 6)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    base = model(x, 5.0, context=ctx, context_mask=mask)
    padded_changed = ctx.clone()
    padded_changed[~mask] = 100.0
    torch.testing.assert_close(model(x, 5.0, context=padded_changed, context_mask=mask), base)
    visible_changed = ctx.clone()
    visible_changed[:, 0] += 1.0
    assert (model(x, 5.0, context=visible_changed, context_mask=mask) - base).abs().amax(dim=(1, 2, 3)).min() > 1e-4
    # no visible token at all: cross-attention contributes nothing, as with no context
    torch.testing.assert_close(model(x, 5.0, context=ctx, context_mask=torch.zeros(2, 5, dtype=torch.bool)),
                               model(x, 5.0))


def test_unet_null_class_is_the_default_and_labels_are_checked():
    model = randomize_zero_init(UNet(3, 3, **TINY, num_classes=4)).eval()
    x = torch.randn(2, 3, 8, 8)
    assert model.null_class == 4
    torch.testing.assert_close(model(x, 3.0), model(x, 3.0, class_labels=torch.tensor([4, 4])))
    assert (model(x, 3.0) - model(x, 3.0, class_labels=[0, 0])).abs().max() > 1e-4
    with pytest.raises(ValueError, match="class_labels must be in 0..3"):
        model(x, 3.0, class_labels=[0, 5])
    with pytest.raises(ValueError, match="class_labels must be 2 integers"):
        model(x, 3.0, class_labels=[0, 1, 2])
    with pytest.raises(ValueError, match="not class-conditional"):
        UNet(3, 3, **TINY)(x, 3.0, class_labels=[0, 1])


def test_unet_gradients_reach_every_parameter():
    model = randomize_zero_init(UNet(3, 3, **TINY, context_dim=6, num_classes=4, pooled_dim=5, dropout=0.1))
    out = model(torch.randn(2, 3, 8, 8), torch.rand(2) * 999, context=torch.randn(2, 3, 6),
                class_labels=[0, 3], pooled=torch.randn(2, 5))
    assert_every_parameter_gets_gradient(model, out)


def test_fourier_positions_are_resolution_free():
    pos = fourier_positions_2d(4, 6).view(4, 6, -1)                         # rows 4, columns 6
    assert pos.shape[-1] == 16
    u = (torch.arange(4) + 0.5) / 4
    torch.testing.assert_close(pos[:, 0, 0], torch.sin(torch.pi * u))        # lowest row frequency
    torch.testing.assert_close(pos[:, 0, 3], torch.sin(torch.pi * 8 * u))   # highest
    assert torch.equal(pos[:, 0, :8], pos[:, 5, :8]) and torch.equal(pos[0, :, 8:], pos[3, :, 8:])
    # one place of the picture has one code at every resolution
    coarse, fine = fourier_positions_2d(4, 4).view(4, 4, -1), fourier_positions_2d(12, 12).view(12, 12, -1)
    torch.testing.assert_close(coarse[1, 2], fine[4, 7])                     # centre (3/8, 5/8) in both


def test_unet_attention_positions_start_as_a_no_op_and_then_tell_places_apart():
    plain = randomize_zero_init(UNet(3, 3, **TINY, context_dim=6)).eval()
    placed = UNet(3, 3, **TINY, context_dim=6, attention_positions=True).eval()
    missing, unexpected = placed.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all("pos_proj" in name for name in missing)
    x, ctx = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 6)
    torch.testing.assert_close(placed(x, 30.0, context=ctx), plain(x, 30.0, context=ctx))
    # a constant image: without positions (and away from the border) every pixel sees the same thing
    with torch.no_grad():
        for name, p in placed.named_parameters():
            if "pos_proj" in name:
                p.copy_(torch.randn_like(p))
    flat = torch.ones(1, 3, 8, 8)
    changed = placed(flat, 30.0, context=ctx[:1]) - plain(flat, 30.0, context=ctx[:1])
    assert changed.abs().max() > 1e-3
    assert_every_parameter_gets_gradient(placed.train(), placed(x, 30.0, context=ctx))


@pytest.mark.parametrize("call, match", [
    (lambda m: m(torch.randn(1, 3, 7, 8), 1.0), "divisible by 2"),
    (lambda m: m(torch.randn(1, 2, 8, 8), 1.0), r"shape \[B, 3, H, W\]"),
    (lambda m: m(torch.randn(1, 3, 8, 8), 1.0, context=torch.randn(1, 2, 5)), "context"),
    (lambda m: m(torch.randn(1, 3, 8, 8), float("nan")), "finite"),
])
def test_unet_rejects_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(UNet(3, 3, **TINY, context_dim=6))


@pytest.mark.parametrize("kwargs, match", [
    (dict(channels=()), "channels"), (dict(attention_levels=(2,)), "attention_levels"),
    (dict(head_dim=0), "head_dim"), (dict(dropout=1.5), "dropout"), (dict(num_classes=0), "num_classes"),
    (dict(channels=(8, 12), head_dim=8, norm_groups=4), "divisible by head_dim"),
])
def test_unet_rejects_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(3, 3, **{**TINY, **kwargs})


# --- DiT ----------------------------------------------------------------------------------------

DIT_TINY = dict(hidden_size=32, depth=2, num_heads=4)


@pytest.mark.parametrize("patch, shape, out_channels", [(2, (2, 4, 8, 8), None), (4, (1, 3, 8, 16), 6), (1, (2, 1, 4, 4), 2)])
def test_dit_output_shape(patch, shape, out_channels):
    model = DiT(in_channels=shape[1], out_channels=out_channels, patch_size=patch, **DIT_TINY)
    assert model(torch.randn(shape), torch.rand(shape[0]) * 999).shape == (shape[0], out_channels or shape[1], *shape[2:])


def test_dit_named_sizes():
    assert {"DiT-T", "DiT-XS", "DiT-S", "DiT-B", "DiT-L", "DiT-XL"} <= set(DIT_SIZES)
    model = DiT.from_size("DiT-T", in_channels=3)
    assert (model.config.depth, model.config.hidden_size) == (DIT_SIZES["DiT-T"]["depth"], DIT_SIZES["DiT-T"]["hidden_size"])
    with pytest.raises(ValueError, match="unknown DiT size"):
        DiT.from_size("DiT-Huge")


def test_dit_adaln_zero_blocks_start_as_identity():
    model = DiT(in_channels=3, num_classes=5, **DIT_TINY)
    x, c = torch.randn(2, 16, 32), torch.randn(2, 32)
    for block in model.blocks:
        torch.testing.assert_close(block(x, c), x)
    assert torch.equal(model(torch.randn(2, 3, 8, 8), 5.0), torch.zeros(2, 3, 8, 8))


def test_dit_conditioning_changes_output_and_null_class_is_default():
    model = randomize_zero_init(DiT(in_channels=3, num_classes=4, pooled_dim=5, context_dim=6, **DIT_TINY)).eval()
    x, ctx, pooled = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 6), torch.randn(1, 5)
    base = model(x, 10.0, context=ctx, class_labels=[1], pooled=pooled)
    for changed in (model(x, 600.0, context=ctx, class_labels=[1], pooled=pooled),
                    model(x, 10.0, context=ctx - 1, class_labels=[1], pooled=pooled),
                    model(x, 10.0, context=ctx, class_labels=[3], pooled=pooled),
                    model(x, 10.0, context=ctx, class_labels=[1], pooled=pooled * 2)):
        assert (changed - base).abs().max() > 1e-4
    torch.testing.assert_close(model(x, 10.0), model(x, 10.0, class_labels=[4]))


def test_dit_gradients_reach_every_parameter():
    model = randomize_zero_init(DiT(in_channels=3, num_classes=4, pooled_dim=5, context_dim=6, **DIT_TINY))
    out = model(torch.randn(2, 3, 8, 8), torch.rand(2) * 999, context=torch.randn(2, 3, 6),
                class_labels=[0, 4], pooled=torch.randn(2, 5))
    assert_every_parameter_gets_gradient(model, out)


def test_dit_positions_are_2d_sincos():
    pos = sincos_positions_2d(16, 3, 5).view(3, 5, 16)
    assert torch.equal(pos[:, 0, :8], pos[:, 4, :8])        # first half: row only
    assert torch.equal(pos[0, :, 8:], pos[2, :, 8:])        # second half: column only
    torch.testing.assert_close(pos[2, 0, :4], torch.sin(2.0 / 10000 ** (torch.arange(4) / 4.0)))
    assert len({tuple(r.tolist()) for r in pos.view(15, 16)}) == 15


def test_dit_rejects_bad_input():
    model = DiT(in_channels=3, patch_size=2, **DIT_TINY)
    with pytest.raises(ValueError, match="divisible by patch_size=2"):
        model(torch.randn(1, 3, 7, 8), 1.0)
    with pytest.raises(ValueError, match="num_heads"):
        DiT(hidden_size=30, num_heads=4)


# --- AutoencoderKL ------------------------------------------------------------------------------

VAE_TINY = dict(channels=(8, 16, 16), norm_groups=4, latent_channels=3)


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (1, 3, 8, 24)])
def test_vae_shapes(shape):
    vae = AutoencoderKL(**VAE_TINY)
    posterior = vae.encode(torch.randn(shape))
    assert posterior.mean.shape == (shape[0], 3, shape[2] // 4, shape[3] // 4)
    assert vae.decode(posterior.sample()).shape == shape
    with pytest.raises(ValueError, match="divisible by 4"):
        vae.encode(torch.randn(1, 3, 10, 8))


def test_vae_posterior_kl_matches_torch_distributions():
    vae = AutoencoderKL(**VAE_TINY)
    post = vae.encode(torch.randn(2, 3, 8, 8))
    q = torch.distributions.Normal(post.mean, post.std)
    p = torch.distributions.Normal(torch.zeros_like(post.mean), torch.ones_like(post.std))
    torch.testing.assert_close(post.kl(), torch.distributions.kl_divergence(q, p).sum(dim=(1, 2, 3)))
    z = post.sample(torch.Generator().manual_seed(0))
    torch.testing.assert_close(z, post.sample(torch.Generator().manual_seed(0)))
    assert torch.equal(post.mode(), post.mean)


def test_vae_latent_normalisation_uses_config():
    vae = AutoencoderKL(**VAE_TINY, scaling_factor=0.5, shift_factor=0.25)
    z = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(vae.normalize(z), (z - 0.25) * 0.5)
    torch.testing.assert_close(vae.denormalize(vae.normalize(z)), z)
    with pytest.raises(ValueError, match="scaling_factor"):
        AutoencoderKL(scaling_factor=0)


def test_vae_gradients_reach_every_parameter():
    vae = AutoencoderKL(**VAE_TINY)
    recon, posterior = vae(torch.randn(2, 3, 8, 8))
    vae.zero_grad()
    (recon.square().mean() + posterior.kl().mean()).backward()
    dead = [n for n, p in vae.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead
