"""Feature networks for FID and KID: small CNNs trained by difflab per embedded dataset, or Inception.

Inception-v3 features (Heusel et al., 2017) are the standard for FID, but its weights are a download
and it never saw the shapes world. difflab ships, for each embedded dataset, a small CNN trained by
``python -m difflab.metrics.train_features`` to recognise that dataset's content (shapes: colours,
shapes, cells, sizes, counts, background; digits: the class), and uses its pooled last-layer activations
as features. Scores on them are *not* Inception FID and are always reported with their feature name.

Weights live in ``difflab/assets/features_<dataset>.safetensors`` with their config in the file's
metadata, and load strictly: a missing, extra, misshapen or non-finite tensor is an error.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from difflab.data.images import from_uint8, to_uint8

ASSETS = Path(__file__).resolve().parent.parent / "assets"
FEATURE_DATASETS = ("shapes", "digits")
INCEPTION_ENV = "DIFFLAB_INCEPTION_WEIGHTS"


@dataclass(frozen=True)
class FeatureConfig:
    dataset: str
    channels: int = 3          # input channels the network sees (images are converted to this)
    resolution: int = 32       # inputs are resized to this before the network
    widths: tuple[int, ...] = (16, 32, 64)
    num_outputs: int = 10      # training head (classes or attribute logits)
    version: int = 1

    @property
    def num_features(self) -> int:
        return self.widths[-1]

    @property
    def name(self) -> str:
        return f"difflab-{self.dataset}-cnn-v{self.version}"


class FeatureNet(nn.Module):
    """Conv stem, one stride-2 stage per width, global average pool -> features; a linear head for training."""

    def __init__(self, config: FeatureConfig):
        super().__init__()
        self.config = config
        self.num_features = config.num_features  # read by torchmetrics
        layers, width = [nn.Conv2d(config.channels, config.widths[0], 3, padding=1), nn.GELU()], config.widths[0]
        for out in config.widths:
            layers += [nn.Conv2d(width, out, 3, stride=2, padding=1), nn.GroupNorm(4, out), nn.GELU(),
                       nn.Conv2d(out, out, 3, padding=1), nn.GELU()]
            width = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, config.num_outputs)
        # Standardisation by the reference features' mean and std (set at load time, not saved): puts
        # the features at unit scale, where KID's kernel (x.y / d + 1)^3 is well conditioned.
        self.register_buffer("feature_mean", torch.zeros(width), persistent=False)
        self.register_buffer("feature_std", torch.ones(width), persistent=False)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> float in [-1, 1] at the network's channels and resolution."""
        x = from_uint8(images)                                            # (N, C, H, W)
        if x.shape[1] != self.config.channels:
            x = x.mean(1, keepdim=True) if self.config.channels == 1 else x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.config.resolution,) * 2:
            x = F.interpolate(x, size=(self.config.resolution,) * 2, mode="bilinear", antialias=True,
                              align_corners=False)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))                              # (N, num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.standardise(self.features(self.prepare(images)))

    def cells(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> the last feature map's cells (N, cells, num_features), row-major, each
        standardised as the pooled feature is (so their mean is :meth:`forward`'s feature)."""
        return self.standardise(self.body(self.prepare(images)).flatten(2).transpose(1, 2))

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.feature_mean) / self.feature_std


def weights_path(dataset: str) -> Path:
    return ASSETS / f"features_{dataset}.safetensors"


def save_feature_net(net: FeatureNet, path: Path, reference: torch.Tensor) -> None:
    """Weights plus the reference features of real images (float16) in one safetensors file."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    tensors["reference_features"] = reference.to(torch.float16).contiguous()
    save_file(tensors, str(path), metadata={"config": json.dumps(asdict(net.config))})


def _check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{path}: non-finite values in {', '.join(bad)}")


def load_feature_net(dataset: str) -> tuple[FeatureNet, torch.Tensor]:
    """The shipped feature network of ``dataset`` (eval mode) and its reference features, standardised."""
    if dataset not in FEATURE_DATASETS:
        raise ValueError(f"no difflab feature network for dataset {dataset!r}; available: "
                         f"{', '.join(FEATURE_DATASETS)} (or features='inception' with local weights)")
    path = weights_path(dataset)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run `python -m difflab.metrics.train_features {dataset}`")
    return load_feature_file(path)


def load_feature_file(path: Path) -> tuple[FeatureNet, torch.Tensor]:
    """A feature network saved by :func:`save_feature_net` (eval mode) and its reference features, standardised."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as handle:
        config = json.loads(handle.metadata()["config"])
    net = FeatureNet(FeatureConfig(**{**config, "widths": tuple(config["widths"])}))
    tensors = load_file(str(path))
    _check_finite(tensors, path)
    reference = tensors.pop("reference_features").float()
    net.load_state_dict(tensors, strict=True)  # missing or extra tensors raise
    net.feature_mean, net.feature_std = reference.mean(0), reference.std(0).clamp_min(1e-6)
    return net.eval().requires_grad_(False), (reference - net.feature_mean) / net.feature_std


def as_uint8_batch(images) -> torch.Tensor:
    """A list of PIL images or a uint8 tensor (N, C, H, W) -> uint8 tensor (N, C, H, W), validated."""
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"image tensors must be uint8 of shape (N, 1 or 3, H, W), got "
                             f"{images.dtype} {tuple(images.shape)}")
        return images
    try:
        return to_uint8(images, channels=3).contiguous()                      # (N, 3, H, W)
    except ValueError as error:
        raise ValueError(f"images must be a non-empty list of PIL images of one size or a uint8 tensor "
                         f"(N, C, H, W): {error}") from None


@torch.no_grad()
def extract(net: nn.Module, images, batch_size: int = 256) -> torch.Tensor:
    """Features (N, D) in float64 of a batch of images."""
    batch = as_uint8_batch(images)
    return torch.cat([net(batch[i: i + batch_size]).double() for i in range(0, len(batch), batch_size)])


def inception_net(weights: str | None = None) -> nn.Module:
    """Inception-v3 pool features (2048) from a local weights file, through torchmetrics / torch-fidelity.

    ``weights`` (or ``$DIFFLAB_INCEPTION_WEIGHTS``) is the FID Inception file of pytorch-fid / torch-fidelity
    (``*inception-2015-12-05-6726825d.pth``); nothing is downloaded.
    """
    path = weights or os.environ.get(INCEPTION_ENV)
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"features='inception' needs the FID Inception weights on disk: pass "
                                f"inception_weights=PATH or set ${INCEPTION_ENV} (got {path!r})")
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                 feature_extractor_weights_path=str(path))
    except (ImportError, ModuleNotFoundError) as error:
        raise ModuleNotFoundError(f"features='inception' needs torch-fidelity (pip install torch-fidelity): "
                                  f"{error}") from None
    net.num_features = 2048
    return net.eval()
