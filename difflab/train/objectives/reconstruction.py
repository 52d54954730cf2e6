"""The autoencoder objective of latent diffusion's first stage (Rombach et al. 2022, Sec. 3 and
appendix G): reconstruction L1 plus a small KL pull of the posterior towards N(0, I).

The VAE's evidence lower bound (Kingma & Welling 2014, eq. 3 and appendix B) weighs the KL term
against a Gaussian likelihood; latent diffusion keeps only a faint KL ("KL-reg", weight ~1e-6) so the
latent stays close to the data, and the diffusion model, not the prior, models its distribution.
Here both terms are means per element: ``|x - D(z)|`` over pixels and KL over latent elements, so
``kl_weight`` does not change meaning with the image size. The posterior sample's noise comes from
each sample's own generator (run seed, global sample position), as the denoising objective's does,
so resumed and multi-process runs stay exact.

Optionally a feature-matching ("perceptual") term compares the reconstruction with the input inside a
frozen image network, as latent diffusion's autoencoders add LPIPS (Rombach et al. 2022, Sec. 3; the
distance of Zhang et al. 2018, eq. 1, here with unit channel weights). The network is difflab's own
``shapes-objects`` encoder (:mod:`difflab.train.image_encoder`), trained to name which colour-shape pairs
a scene holds, so the term charges a decoder for a cross that drifts towards a circle, which L1 barely
sees (a few pixels at an object's arms).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from difflab.noise import stream_seed
from difflab.train.objectives.base import Batch, Objective


def posterior_noise(seed: int, positions: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """One standard normal draw of ``shape`` per sample, seeded by (run seed, global position)."""
    generator = torch.Generator()
    draws = []
    for position in positions:
        generator.manual_seed(stream_seed(seed, position, 13))
        draws.append(torch.randn(shape, generator=generator))
    return torch.stack(draws)


class FeatureDistance(nn.Module):
    """LPIPS-style distance in a frozen :class:`~difflab.metrics.features.FeatureNet` (Zhang et al. 2018,
    eq. 1 with unit weights): at the end of each stride-2 stage, activations are unit-normalised across
    channels per position; the distance is the squared difference averaged over positions, summed over
    stages. Images are float [B, 3, H, W] in [-1, 1], resized (differentiably) to the network's size."""

    def __init__(self, net):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        body = list(net.body)
        # stem (conv, act), then per stage (conv s2, norm, act, conv, act): a stage ends every 5 layers
        self.stage_ends = set(range(len(body) - 1, 1, -5))

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        size = (self.net.config.resolution,) * 2
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        outputs = []
        for i, layer in enumerate(self.net.body):
            x = layer(x)
            if i in self.stage_ends:
                outputs.append(x / (x.square().sum(1, keepdim=True) + 1e-10).sqrt())
        return outputs

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-sample distance [B] between image batches ``a`` and ``b``."""
        stages = zip(self.activations(a), self.activations(b))
        return sum((fa - fb).square().sum(1).mean(dim=(1, 2)) for fa, fb in stages)


def objects_distance() -> FeatureDistance:
    """:class:`FeatureDistance` in the shipped ``shapes-objects`` image encoder."""
    from difflab.metrics.features import load_feature_file
    from difflab.models.image_encoders import OBJECTS_WEIGHTS

    return FeatureDistance(load_feature_file(OBJECTS_WEIGHTS)[0])


class ReconstructionObjective(Objective):
    """``L1(x, D(z)) + kl_weight * KL(q(z|x) || N(0, I)) [+ perceptual_weight * d(x, D(z))]`` with
    ``z ~ q(z|x)`` (reparameterised) and ``d`` a :class:`FeatureDistance` (``shapes-objects``)."""

    name = "reconstruction"

    def __init__(self, kl_weight: float = 1e-6, seed: int = 0, autocast=contextlib.nullcontext,
                 perceptual_weight: float = 0.0):
        for name, value in (("kl_weight", kl_weight), ("perceptual_weight", perceptual_weight)):
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        self.kl_weight, self.seed, self.autocast = float(kl_weight), seed, autocast
        self.perceptual_weight = float(perceptual_weight)
        self.distance = objects_distance() if perceptual_weight > 0 else None

    def loss(self, model, batch: Batch) -> torch.Tensor:
        x = batch.x0
        with self.autocast():
            posterior = model.encode(x)
            eps = posterior_noise(self.seed, batch.positions, tuple(posterior.mean.shape[1:]))
            z = posterior.mean + posterior.std * eps.to(posterior.mean)
            reconstruction = model.decode(z)
        rec = (reconstruction.float() - x.float()).abs().mean()
        kl = posterior.kl().float().sum() / posterior.mean.numel()
        loss = rec + self.kl_weight * kl
        if self.distance is not None:
            if x.shape[1] != 3:
                raise ValueError(f"the perceptual term needs RGB images, got {x.shape[1]} channel(s)")
            self.distance.to(x.device)
            loss = loss + self.perceptual_weight * self.distance(reconstruction.float(), x.float()).mean()
        return loss
