"""Waveform <-> normalised log-mel spectrogram, the "image" an audio diffusion model sees.

A clip of ``CLIP_SAMPLES`` samples at ``SAMPLE_RATE`` becomes a ``[1, N_MELS, FRAMES]`` tensor in
[-1, 1] (Riffusion-style: an image UNet denoises it like a one-channel picture):

1. STFT: Hann window of ``N_FFT`` samples, hop ``HOP``, centred frames (reflect padding); frame t is
   centred on sample ``t * HOP``, and the frame centred on the last sample + 1 is dropped, so a clip
   gives exactly ``FRAMES = CLIP_SAMPLES / HOP`` frames. The spectrum is divided by the window's sum,
   so a full-scale sine has peak magnitude 1/2 (-6 dB) at any ``N_FFT``.
2. Mel power: ``P_mel = M @ |X|^2`` with ``M`` the triangular filterbank of ``mel_filterbank`` on the
   HTK mel scale, ``mel(f) = 2595 log10(1 + f / 700)`` (Young et al., *The HTK Book*), each triangle
   peaking at 1 (no area normalisation, so a tone reads the same level in a wide band as in a narrow one).
3. Level: ``dB = 10 log10(P_mel)``, clipped to [``DB_FLOOR``, ``DB_CEIL``] = [-80, 0] dB re a full-scale
   bin, mapped linearly to [-1, 1]: ``s = 2 (dB - DB_FLOOR) / (DB_CEIL - DB_FLOOR) - 1``.

The way back (``spectrogram_to_waveform``) undoes 3, inverts 2 by non-negative least squares (FISTA from
the clamped pseudo-inverse), and finds a phase for the magnitude by the fast Griffin-Lim algorithm
(Griffin & Lim, "Signal estimation from modified short-time Fourier transform", IEEE TASSP 1984; momentum
of Perraudin, Balazs & Sondergaard, "A fast Griffin-Lim algorithm", WASPAA 2013). Everything is float32
torch, batched over the first axis, and deterministic (the initial phase is zero).

Why 64 HTK mels over 60 Hz-4 kHz: the sounds world plays C3 (131 Hz) to C6 (1047 Hz) with every partial
below 3.8 kHz, and its judge (``difflab.metrics.pitch``) must still name pitches within half a semitone
after a round trip. 64 bands over 60 Hz-6 kHz moved a reconstructed sine by up to 105 cents (pseudo-
inverse); 60 Hz-4 kHz with NNLS keeps the world's notes within 0.2 semitone (``benchmarks/judge_sounds.py``).
On the world's clips about 64% of cells sit at the floor (-1); mean -0.75, standard deviation 0.44.
"""

from __future__ import annotations

import math

import torch

SAMPLE_RATE = 16_000
CLIP_SAMPLES = 16_384          # 1.024 s
HOP = 256                      # 16 ms per frame
FRAMES = CLIP_SAMPLES // HOP   # 64
N_FFT = 1024                   # 64 ms window, 15.6 Hz bins
N_MELS = 64
F_MIN = 60.0                   # Hz; below C2, the lowest fundamental the world plays is C3 = 131 Hz
F_MAX = 4000.0                 # Hz; the world's partials and clicks stay below 3.8 kHz
DB_FLOOR = -80.0
DB_CEIL = 0.0


def hz_to_mel(f):
    """HTK mel scale: ``2595 log10(1 + f / 700)``."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (torch.as_tensor(m, dtype=torch.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                   f_min: float = F_MIN, f_max: float = F_MAX) -> torch.Tensor:
    """``[n_mels, n_fft // 2 + 1]`` triangular filters, equally spaced on the HTK mel scale, peak 1.

    Filter k rises linearly from edge k to its centre k + 1 and falls to edge k + 2, where the
    ``n_mels + 2`` edges are equally spaced in mel between ``f_min`` and ``f_max``.
    """
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max}")
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2))
    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def _window(device=None) -> torch.Tensor:
    return torch.hann_window(N_FFT, periodic=True, device=device)


def stft(wave: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` -> complex ``[B, N_FFT // 2 + 1, N / HOP]``, scaled so a full-scale sine peaks at 1/2."""
    window = _window(wave.device)
    spec = torch.stft(wave, N_FFT, HOP, window=window, center=True, pad_mode="reflect", return_complex=True)
    return spec[..., : wave.shape[-1] // HOP] / window.sum()


def istft(spec: torch.Tensor, length: int) -> torch.Tensor:
    """The least-squares inverse of ``stft`` (Griffin & Lim 1984, eq. 6): ``[B, F, T]`` -> ``[B, length]``."""
    window = _window(spec.device)
    return torch.istft(spec * window.sum(), N_FFT, HOP, window=window, center=True, length=length)


def _as_batch(wave) -> torch.Tensor:
    wave = torch.as_tensor(wave, dtype=torch.float32)
    if wave.ndim == 1:
        wave = wave[None]
    if wave.ndim != 2 or wave.shape[-1] != CLIP_SAMPLES:
        raise ValueError(f"wave must be [N] or [B, N] with N = {CLIP_SAMPLES} samples, got {tuple(wave.shape)}")
    return wave


def waveform_to_spectrogram(wave, n_mels: int = N_MELS) -> torch.Tensor:
    """``[N]`` or ``[B, N]`` waveform in [-1, 1] -> normalised log-mel ``[B, 1, n_mels, FRAMES]`` in [-1, 1]."""
    wave = _as_batch(wave)
    power = stft(wave).abs() ** 2                                          # [B, F, T]
    mel_power = mel_filterbank(n_mels).to(wave.device) @ power             # [B, n_mels, T]
    db = 10.0 * torch.log10(mel_power.clamp_min(10.0 ** (DB_FLOOR / 10)))
    return (2.0 * (db.clamp(DB_FLOOR, DB_CEIL) - DB_FLOOR) / (DB_CEIL - DB_FLOOR) - 1.0)[:, None]


def spectrogram_to_mel_power(spec: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation: ``[B, 1, n_mels, T]`` in [-1, 1] -> mel power ``[B, n_mels, T]``."""
    db = DB_FLOOR + (spec[:, 0].clamp(-1, 1) + 1.0) * (DB_CEIL - DB_FLOOR) / 2.0
    return 10.0 ** (db / 10.0)


def mel_to_linear_power(mel_power: torch.Tensor, steps: int = 100) -> torch.Tensor:
    """Non-negative least squares ``argmin_{P >= 0} ||M P - P_mel||^2``, ``[B, n_mels, T] -> [B, F, T]``.

    FISTA (Beck & Teboulle, SIAM J. Imaging Sci. 2009) from the clamped pseudo-inverse
    ``max(M^+ P_mel, 0)``: projected gradient steps ``P = max(Y - M^T (M Y - P_mel) / L, 0)`` with
    ``L = ||M||_2^2`` (the gradient's Lipschitz constant) and Nesterov momentum
    ``Y = P_k + (t_k - 1) / t_{k+1} (P_k - P_{k-1})``, ``t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2``.
    Unlike the pseudo-inverse, which spreads a partial over its whole band, NNLS keeps it narrow.
    Bins outside [F_MIN, F_MAX], which no filter sees, get zero power.
    """
    batch, n_mels, frames = mel_power.shape
    full = mel_filterbank(n_mels).to(mel_power.device)
    seen = full.sum(0) > 0
    fb = full[:, seen]
    target = mel_power.permute(1, 0, 2).reshape(n_mels, batch * frames)   # one matrix: [n_mels, B * T]
    power = (torch.linalg.pinv(fb) @ target).clamp_min(0.0)
    step = 1.0 / torch.linalg.matrix_norm(fb, ord=2) ** 2
    previous, y, t = power, power, 1.0
    for _ in range(steps):
        power = (y - step * (fb.T @ (fb @ y - target))).clamp_min(0.0)
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y = power + (t - 1.0) / t_next * (power - previous)
        previous, t = power, t_next
    out = mel_power.new_zeros(full.shape[1], batch * frames)
    out[seen] = power
    return out.reshape(-1, batch, frames).permute(1, 0, 2)


def griffin_lim(magnitude: torch.Tensor, iterations: int = 32, momentum: float = 0.99) -> torch.Tensor:
    """Fast Griffin-Lim (Perraudin et al. 2013): ``[B, F, T]`` magnitude ``|S|`` -> ``[B, T * HOP]`` waveform.

    ``t_n = stft(istft(c_{n-1}))`` projects on consistent spectrograms (Griffin & Lim 1984);
    ``c_n = |S| exp(i arg(t_n + alpha (t_n - t_{n-1})))`` projects the extrapolated estimate on the given
    magnitude; ``alpha = 0`` is the original algorithm. ``c_0 = |S|`` (zero phase), so it is deterministic.
    """
    length = magnitude.shape[-1] * HOP
    coefficients = magnitude.to(torch.complex64)
    previous = torch.zeros_like(coefficients)
    for _ in range(iterations):
        rebuilt = stft(istft(coefficients, length))
        accelerated = rebuilt + momentum * (rebuilt - previous)
        coefficients = magnitude * torch.exp(1j * torch.angle(accelerated))
        previous = rebuilt
    return istft(coefficients, length)


def spectrogram_to_waveform(spec: torch.Tensor, iterations: int = 32) -> torch.Tensor:
    """Normalised log-mel ``[B, 1, n_mels, FRAMES]`` -> waveform ``[B, CLIP_SAMPLES]`` (clipped to [-1, 1]).

    Mel power -> linear power by NNLS (``mel_to_linear_power``), then ``iterations`` of fast Griffin-Lim on
    its square root. Round trip of the world's clips, spectrogram -> waveform -> spectrogram: mean
    absolute error about 0.03 (1.2 dB) on cells above -0.5, 0.05 over all cells (tests/test_sounds_world.py).
    """
    spec = torch.as_tensor(spec, dtype=torch.float32)
    if spec.ndim != 4 or spec.shape[1] != 1 or spec.shape[-1] != FRAMES:
        raise ValueError(f"spec must be [B, 1, n_mels, {FRAMES}], got {tuple(spec.shape)}")
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer (32-64 is usual), got {iterations!r}")
    magnitude = mel_to_linear_power(spectrogram_to_mel_power(spec)).sqrt()
    return griffin_lim(magnitude, iterations).clamp(-1.0, 1.0)


__all__ = ["SAMPLE_RATE", "CLIP_SAMPLES", "HOP", "N_FFT", "N_MELS", "FRAMES", "F_MIN", "F_MAX", "DB_FLOOR",
           "DB_CEIL", "mel_filterbank", "waveform_to_spectrogram", "spectrogram_to_waveform", "griffin_lim",
           "mel_to_linear_power", "stft", "istft"]
