"""VAECodec: latents through a VAE, whole, sliced or in blended tiles."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from difflab.codecs import VAECodec, _tile_starts
from difflab.models.vae import AutoencoderKL


class LocalVAE(torch.nn.Module):
    """A decoder whose every output pixel depends on its own latent pixel only: tiling it must give
    exactly the whole decode, which checks that the tiles cover everything and the weights blend."""

    class config:
        in_channels, latent_channels, downscale = 3, 4, 4

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def decode(self, z):
        return F.interpolate(torch.tanh(z[:, :3] + z[:, 3:]) * self.scale, scale_factor=4, mode="nearest")

    def normalize(self, z):
        return z

    denormalize = normalize


@pytest.mark.parametrize("tile,overlap,size", [(8, 4, (20, 13)), (16, 8, (16, 40)), (6, 0, (12, 18)), (8, 7, (9, 30))])
def test_tiles_cover_the_image_and_blend_to_the_whole_decode(tile, overlap, size):
    codec = VAECodec(LocalVAE())
    z = torch.randn(2, 4, *size, generator=torch.Generator().manual_seed(0))
    whole = codec.decode(z)
    codec.set_tiling(tile, overlap)
    assert torch.allclose(codec.decode(z), whole, atol=1e-6)
    for n in size:
        starts = _tile_starts(n, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile >= n and all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_a_real_vae_tiled_sliced_and_whole():
    torch.manual_seed(0)
    vae = AutoencoderKL(channels=(16, 32), latent_channels=4, norm_groups=8).eval()
    codec = VAECodec(vae)
    z = torch.randn(2, 4, 24, 20)
    whole = codec.decode(z)
    codec.slicing = True
    assert torch.allclose(codec.decode(z), whole, atol=1e-5)  # one image at a time: the same images
    codec.set_tiling(24, 8)
    assert torch.allclose(codec.decode(z), whole, atol=1e-5)  # a tile as big as the image: no tiling
    codec.set_tiling(12, 4)
    tiled = codec.decode(z)
    assert tiled.shape == whole.shape and torch.isfinite(tiled).all() and tiled.abs().max() <= 1
    with pytest.raises(ValueError, match="0 <= overlap < tile"):
        codec.set_tiling(8, 8)
