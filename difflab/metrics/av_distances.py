"""Fréchet and kernel distances for clips and sounds, on features of difflab's own (issue 17).

FVD (Unterthiner et al., 2018) and FAD (Kilgour et al., 2019) apply FID's Fréchet distance to the
features of networks trained elsewhere (I3D, VGGish), whose weights are downloads that never saw
difflab's worlds. These scores use the same two statistics, the Fréchet distance between fitted
Gaussians (Heusel et al., 2017, eq. 6) and the unbiased kernel MMD^2 of KID (Binkowski et al., 2018,
eq. 3), on features built from what difflab already has:

- **a clip** (``video_features``, 192-d): each frame through the shapes FID network
  (``difflab.metrics.features``, 64-d, standardised on real shapes images); the clip's feature is the
  mean of its frame features, the change from the mean of the first half of the frames to the mean of
  the second half, and the mean absolute change from one frame to the next. The first part sees what
  is drawn, the second where it goes (a clip played backwards keeps the first part and negates the
  second), the third how smoothly (a frozen clip has none; flicker has much).
- **a sound** (``audio_features``, 64-d): its normalised log-mel spectrogram
  (``difflab.data.spectrogram``, 64 bands in [-1, 1]) pooled to 16 bands of 4; per band the mean level
  of the first half of the clip, of the second half, the spread over time and the mean absolute
  frame-to-frame change. The halves see pitch order, the spread and the change see onsets.

The scores rank models of one world against each other and against real samples; they are not FVD or
FAD and are always reported with their feature name (``VIDEO_FEATURES``, ``AUDIO_FEATURES``). With a few
dozen samples the Fréchet distance is biased upwards (it fits a 192-d covariance); KID is unbiased.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from difflab.metrics.distances import cached_feature_net, frechet_distance, kernel_distance
from difflab.metrics.features import extract
from difflab.metrics.motion import as_video

VIDEO_FEATURES = "difflab-shapes-cnn-v1 per frame: mean, half-to-half change, frame-to-frame change (192-d; not FVD)"
AUDIO_FEATURES = "log-mel band statistics, 16 bands x 4 (64-d; not FAD)"
AUDIO_BANDS = 16


def video_features(clips: Sequence) -> torch.Tensor:
    """(N, 192) float64 features of clips: each a uint8 array [T, H, W, 3], a list of PIL frames or a
    float tensor [3, T, H, W] in [-1, 1] (whatever :func:`difflab.metrics.motion.as_video` takes)."""
    if len(clips) == 0:
        raise ValueError("video_features needs at least one clip")
    videos = [as_video(c) for c in clips]
    if len({v.shape for v in videos}) != 1:
        raise ValueError(f"all clips must have one shape, got {sorted({v.shape for v in videos})}")
    net, _ = cached_feature_net("shapes")
    frames = torch.from_numpy(np.stack(videos)).permute(0, 1, 4, 2, 3)          # (N, T, 3, H, W)
    n, t = frames.shape[:2]
    per_frame = extract(net, frames.reshape(n * t, *frames.shape[2:]).contiguous()).reshape(n, t, -1)
    half = t // 2
    change = per_frame[:, t - half:].mean(1) - per_frame[:, :half].mean(1)
    return torch.cat([per_frame.mean(1), change, per_frame.diff(dim=1).abs().mean(1)], dim=1)


def audio_features(waves: Sequence) -> torch.Tensor:
    """(N, 64) float64 features of sounds: each a waveform of the sounds world (16 kHz, 16,384 samples)."""
    from difflab.data.spectrogram import N_MELS, waveform_to_spectrogram

    if len(waves) == 0:
        raise ValueError("audio_features needs at least one sound")
    batch = torch.stack([torch.as_tensor(np.asarray(w, dtype=np.float32)) for w in waves])
    if not torch.isfinite(batch).all():
        raise ValueError("a sound holds non-finite samples")
    spec = waveform_to_spectrogram(batch)[:, 0].double()                          # (N, mels, frames)
    bands = spec.reshape(len(batch), AUDIO_BANDS, N_MELS // AUDIO_BANDS, -1).mean(2)  # (N, 16, frames)
    half = bands.shape[-1] // 2
    return torch.cat([bands[..., :half].mean(-1), bands[..., half:].mean(-1), bands.std(-1),
                      bands.diff(dim=-1).abs().mean(-1)], dim=1)


def distances(real: torch.Tensor, fake: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """Fréchet distance and KID (mean, std over subsets) between two feature sets from this module."""
    kid_mean, kid_std = kernel_distance(real, fake, subsets=50, subset_size=1000, seed=seed)
    return {"fd": frechet_distance(real, fake), "kid": kid_mean, "kid_std": kid_std}
