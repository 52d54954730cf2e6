"""The autoencoder objective of latent diffusion's first stage (Rombach et al. 2022, Sec. 3 and
appendix G): reconstruction L1 plus a small KL pull of the posterior towards N(0, I).

The VAE's evidence lower bound (Kingma & Welling 2014, eq. 3 and appendix B) weighs the KL term
against a Gaussian likelihood; latent diffusion keeps only a faint KL ("KL-reg", weight ~1e-6) so the
latent stays close to the data, and the diffusion model, not the prior, models its distribution.
Here both terms are means per element: ``|x - D(z)|`` over pixels and KL over latent elements, so
``kl_weight`` does not change meaning with the image size. The posterior sample's noise comes from
each sample's own generator (run seed, global sample position), as the denoising objective's does,
so resumed and multi-process runs stay exact.
"""

from __future__ import annotations

import contextlib

import torch

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


class ReconstructionObjective(Objective):
    """``L1(x, D(z)) + kl_weight * KL(q(z|x) || N(0, I))`` with ``z ~ q(z|x)`` (reparameterised)."""

    name = "reconstruction"

    def __init__(self, kl_weight: float = 1e-6, seed: int = 0, autocast=contextlib.nullcontext):
        if not (isinstance(kl_weight, (int, float)) and kl_weight >= 0):
            raise ValueError(f"kl_weight must be a non-negative number, got {kl_weight!r}")
        self.kl_weight, self.seed, self.autocast = float(kl_weight), seed, autocast

    def loss(self, model, batch: Batch) -> torch.Tensor:
        x = batch.x0
        with self.autocast():
            posterior = model.encode(x)
            eps = posterior_noise(self.seed, batch.positions, tuple(posterior.mean.shape[1:]))
            z = posterior.mean + posterior.std * eps.to(posterior.mean)
            reconstruction = model.decode(z)
        rec = (reconstruction.float() - x.float()).abs().mean()
        kl = posterior.kl().float().sum() / posterior.mean.numel()
        return rec + self.kl_weight * kl
