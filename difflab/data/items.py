"""A dataset item -> the data-space tensor a model trains on, whatever the medium.

- ``"image"`` (PIL): float ``[C, H, W]`` in [-1, 1] (:mod:`difflab.data.images`), resized to the resolution;
- ``"video"`` (uint8 ``[T, H, W, C]``): uint8 ``[C, T, H, W]``, kept as stored (a quarter of the float's memory
  in a cache); :func:`as_float` maps it to [-1, 1] with the images' rule;
- ``"audio"`` (float waveform): the normalised log-mel spectrogram ``[1, mels, frames]`` of
  :mod:`difflab.data.spectrogram`, the space an audio model works in.
"""

from __future__ import annotations

import numpy as np
import torch

from difflab.data.images import from_uint8, to_tensor


def item_tensor(item: dict, channels: int, resolution: int) -> torch.Tensor:
    """The data-space tensor of one dataset item (see the module docstring)."""
    if "image" in item:
        image = item["image"]
        if image.size != (resolution, resolution):
            image = image.resize((resolution, resolution))
        return to_tensor(image, channels)[0]                                   # [C, H, W]
    if "video" in item:
        frames = np.asarray(item["video"])
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != channels:
            raise ValueError(f"a video item must be uint8 [T, H, W, {channels}], got {frames.dtype} {list(frames.shape)}")
        return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)   # [C, T, H, W] uint8
    if "audio" in item:
        from difflab.data.spectrogram import waveform_to_spectrogram
        wave = torch.as_tensor(np.asarray(item["audio"], dtype=np.float32))
        return waveform_to_spectrogram(wave[None])[0]                          # [1, mels, frames]
    raise ValueError(f"a dataset item needs 'image', 'video' or 'audio'; got keys {sorted(item)}")


def as_float(tensor: torch.Tensor) -> torch.Tensor:
    """A stored item tensor as float32 in data space: uint8 pixels -> [-1, 1]; floats unchanged."""
    return from_uint8(tensor) if tensor.dtype == torch.uint8 else tensor
