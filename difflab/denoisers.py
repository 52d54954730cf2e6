"""Denoisers: any native model + schedule + parameterization -> one sigma-space contract.

``denoiser(x, sigma, **cond) -> x0`` with ``x = x0 + sigma * eps`` in VE coordinates (k-diffusion's
contract; Karras et al. 2022, Sec. 2). Samplers see only this and never branch on what the network
predicts: the parameterization (``difflab.parameterization``) owns c_in, c_skip and c_out.

Notation: VE ``x``, ``sigma``; native ``x_t = alpha * x``, ``sigma_t = alpha * sigma`` (see
``difflab.schedules``). The network sees ``x_in = c_in * x`` at model time ``schedule.t(sigma)`` and
x0 = c_skip * x_in + c_out * F. At the pure-noise endpoint (sigma = inf) VE coordinates are
infinite, so by convention a sampler passes the unit noise z = x_t itself there; a
parameterization that cannot give x0 from it (epsilon, EDM) is refused.
"""

from __future__ import annotations

import torch

from difflab.parameterization import PARAMETERIZATIONS, Parameterization, get_parameterization
from difflab.schedules import NoiseSchedule

PREDICTION_TYPES = tuple(PARAMETERIZATIONS)


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Give a per-sample tensor [B] trailing singleton dims to broadcast against a [B, ...] tensor."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def batch_sigma(sigma, x: torch.Tensor) -> torch.Tensor:
    """Sigma as a float64 tensor of shape [B] (a scalar is broadcast to the batch)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64).to("cpu")
    return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma.reshape(x.shape[0])


def validate_prediction_type(prediction_type) -> str:
    """The name of a prediction type (a name, an options dict or a Parameterization)."""
    return get_parameterization(prediction_type).name


class Denoiser:
    """Wrap a native model ``model(x_t, t, **cond) -> prediction`` into ``denoiser(x, sigma, **cond) -> x0``.

    ``prediction_type``: a parameterization name (``"epsilon"``, ``"v_prediction"``, ``"sample"``,
    ``"flow"``, ``"edm"``, ``"consistency"``) or a :class:`~difflab.parameterization.Parameterization`.
    """

    def __init__(self, model, schedule: NoiseSchedule, prediction_type="epsilon"):
        if not callable(model):
            raise ValueError(f"model must be callable as model(x_t, t, **cond), got {type(model).__name__}")
        if not isinstance(schedule, NoiseSchedule):
            raise ValueError(f"schedule must be a difflab.NoiseSchedule, got {type(schedule).__name__}")
        self.model = model
        self.schedule = schedule
        self.parameterization: Parameterization = get_parameterization(prediction_type)
        self.prediction_type = self.parameterization.name

    def __repr__(self) -> str:
        return f"Denoiser({type(self.model).__name__}, {self.schedule.kind}, {self.parameterization!r})"

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        sigma = batch_sigma(sigma, x)
        if not self.parameterization.handles_pure_noise and bool(torch.isinf(sigma).any()):
            raise ValueError(f"a model of the {self.prediction_type} parameterization cannot denoise pure noise (alpha = 0): "
                             "use a schedule without a pure-noise endpoint, or a v_prediction / flow / sample model")
        alpha, sigma_t = self.schedule.alpha_sigma(sigma)
        x_in = x * append_dims(self.parameterization.c_in(alpha, sigma_t), x.ndim).to(x)
        t = self.schedule.t(sigma).to(device=x.device, dtype=x.dtype)
        out = self.model(x_in, t, **cond)
        c_skip, c_out = self.parameterization.coefficients(alpha, sigma_t)
        return append_dims(c_skip, x.ndim).to(x) * x_in + append_dims(c_out, x.ndim).to(x) * out

    def output_coefficients(self, alpha: torch.Tensor, sigma_t: torch.Tensor):
        """(c_skip, c_out) with x0 = c_skip * x_in + c_out * model_output (see the parameterization)."""
        return self.parameterization.coefficients(alpha, sigma_t)
