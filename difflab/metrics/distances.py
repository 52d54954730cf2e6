"""FID and KID on a chosen feature network, with the Fréchet and kernel math of torchmetrics.

FID (Heusel et al., 2017) is the Fréchet distance between Gaussians fitted to the two feature sets,
||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)); KID (Bińkowski et al., 2018) is the unbiased
MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets.
Features are extracted here, then handed to torchmetrics' metrics through an identity "network", so
the statistics are exactly torchmetrics'.

``real`` may be ``None``: the reference features shipped with the dataset's feature network are used.
Every result names its features (``feature_name``): FID on difflab features is not Inception FID.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from difflab.metrics.features import extract, inception_net, load_feature_net


class _Identity(nn.Module):
    """Passes precomputed features to a torchmetrics metric that expects a feature network."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


@lru_cache(maxsize=4)
def cached_feature_net(dataset: str):
    return load_feature_net(dataset)


def feature_name(dataset: str = "shapes", features: str | None = None) -> str:
    """How a score must be labelled in a report."""
    if features == "inception":
        return "Inception-v3 pool3 (2048-d): standard FID"
    net, _ = cached_feature_net(dataset)
    return f"{net.config.name} ({net.num_features}-d difflab {dataset} features; not Inception FID)"


def features_of(images, dataset: str = "shapes", features: str | None = None,
                inception_weights: str | None = None) -> torch.Tensor:
    """Features (N, D) of images, or the shipped reference features when ``images`` is None."""
    if features not in (None, "difflab", "inception"):
        raise ValueError(f"features must be None/'difflab' (the dataset's own network) or 'inception', "
                         f"got {features!r}")
    if features == "inception":
        if images is None:
            raise ValueError("features='inception' has no shipped reference: pass real images")
        return extract(inception_net(inception_weights), images, batch_size=32)
    net, reference = cached_feature_net(dataset)
    return reference.double() if images is None else extract(net, images)


def frechet_distance(f_real: torch.Tensor, f_fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) (Heusel et al., 2017, eq. 6)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(f_real) < 2 or len(f_fake) < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 samples on each side, got {len(f_real)} real, "
                         f"{len(f_fake)} fake")
    metric = FrechetInceptionDistance(feature=_Identity(f_real.shape[1]), reset_real_features=False)
    metric.update(f_real, real=True)
    metric.update(f_fake, real=False)
    return float(metric.compute())


def fid(real, fake, dataset: str = "shapes", features: str | None = None,
        inception_weights: str | None = None) -> float:
    """Fréchet distance between the feature distributions of ``real`` (or the reference) and ``fake``."""
    return frechet_distance(features_of(real, dataset, features, inception_weights),
                            features_of(fake, dataset, features, inception_weights))


def kid(real, fake, dataset: str = "shapes", features: str | None = None, subsets: int = 50,
        subset_size: int = 1000, seed: int = 0, inception_weights: str | None = None) -> tuple[float, float]:
    """KID mean and standard deviation over ``subsets`` random subsets of ``subset_size`` images.

    KID is the unbiased MMD^2 estimate of Binkowski et al. (2018), eq. 3 (cubic polynomial kernel),
    so its mean does not depend on the subset size. When a sample is no larger than ``subset_size``,
    subsets of half the smaller sample are used: subsets of the whole sample would all be the same
    set, and the reported spread would be zero however uncertain the estimate is.
    """
    return kernel_distance(features_of(real, dataset, features, inception_weights),
                           features_of(fake, dataset, features, inception_weights), subsets, subset_size, seed)


def kernel_distance(f_real: torch.Tensor, f_fake: torch.Tensor, subsets: int = 50, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID's mean and standard deviation on two feature sets (N, D); see :func:`kid` for the subsets."""
    import warnings

    from torchmetrics.image.kid import KernelInceptionDistance

    smaller = min(len(f_real), len(f_fake))
    size = subset_size if subset_size < smaller else max(2, smaller // 2)
    if smaller < 2:
        raise ValueError(f"KID needs at least 2 samples on each side, got {len(f_real)} real, {len(f_fake)} fake")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=_Identity(f_real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(f_real, real=True)
    metric.update(f_fake, real=False)
    with torch.random.fork_rng():  # the subsets come from torch's global generator: fix them
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)
