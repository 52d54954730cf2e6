"""Cascades: a pixel model behind the learned decoder of an area VAE, one package that makes larger images.

The bundled ``shapes-v2`` is made this way: ``cascade(PHASE5, DECODER, OUT)``, with v1.1 annealed for one
more phase as the base (its model card). The network and its weights are the base's, unchanged; only the
codec and the output size change.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from difflab.codecs import PixelCodec, VAECodec, VideoCodec
from difflab.models.package import read_config
from difflab.models.vae import AutoencoderKL
from difflab.pipelines.image import Pipeline
from difflab.pipelines.packaging import save_pipeline
from difflab.settings import package_folder


def cascade(base, vae, folder) -> Path:
    """Write, at ``folder``, the package of a pixel model ``base`` (a package folder or bundled name)
    behind the decoder of an area VAE ``vae`` (an AutoencoderKL package with ``encoder="area"``): the
    latent of such a VAE is the image area-pooled by its downscale f, so ``base``'s samples *are*
    latents, and the new package makes images f times larger with the same network and weights (a
    cascade whose second stage is a learned decoder; Ho et al. 2022). Both parts are checked first."""
    if Path(folder).exists():
        raise FileExistsError(f"cascade: {folder} exists; it writes a new folder")
    pipe = Pipeline.from_pretrained(base)
    if not isinstance(pipe.codec, PixelCodec) or isinstance(pipe.codec, VideoCodec) or pipe.codec.scale != 1.0:
        raise ValueError(f"cascade: {base} is not an image model in plain pixel space (its codec: {pipe.codec!r})")
    vae_folder = package_folder(vae)
    decoder = AutoencoderKL.from_pretrained(vae_folder).eval().requires_grad_(False)
    if decoder.config.encoder != "area" or decoder.config.latent_channels != pipe.codec.channels:
        raise ValueError(f"cascade: {vae} must be an AutoencoderKL with encoder='area' and "
                         f"{pipe.codec.channels} latent channels (a decoder onto {base}'s images)")
    if (decoder.config.scaling_factor, decoder.config.shift_factor) != (1.0, 0.0):
        raise ValueError(f"cascade: {vae} rescales its latents, so {base}'s images are not its latents")
    training = {"task": "cascade", "base": str(base), "vae": str(vae),
                "base_training": read_config(pipe.folder).get("training"),
                "vae_training": read_config(vae_folder).get("training")}
    stacked = dataclasses.replace(pipe, codec=VAECodec(decoder), resolution=pipe.resolution * decoder.config.downscale)
    return save_pipeline(stacked, folder, training=training)


def base_of(package, folder) -> Path:
    """Write, at ``folder``, the pixel model inside a cascade ``package`` (a package folder or bundled name whose
    VAE is an area VAE): the same network and weights at the latent size, in plain pixel space. The inverse of
    :func:`cascade`, for what trains only in pixel space (an IP-Adapter, a ControlNet) on a cascade's network."""
    if Path(folder).exists():
        raise FileExistsError(f"base_of: {folder} exists; it writes a new folder")
    refusal = f"base_of: {package} is not a cascade (a model behind an unscaled area VAE's decoder)"
    if (read_config(package_folder(package)).get("codec") or {}).get("type") != "vae":
        raise ValueError(refusal)                                        # before any weights load
    pipe = Pipeline.from_pretrained(package)
    vae = pipe.codec.vae
    if not isinstance(pipe.codec, VAECodec) or vae.config.encoder != "area" or (
            vae.config.scaling_factor, vae.config.shift_factor) != (1.0, 0.0):
        raise ValueError(refusal)
    plain = dataclasses.replace(pipe, codec=PixelCodec(vae.config.latent_channels),
                                resolution=pipe.resolution // vae.config.downscale)
    return save_pipeline(plain, folder, training={"task": "base_of", "cascade": str(package),
                                                  "cascade_training": read_config(pipe.folder).get("training")})
