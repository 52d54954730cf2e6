"""Samplers: one stateless function each over a denoiser and a descending sigma grid ending in 0.

``SAMPLERS[name](denoiser, x, sigmas, extra_args=None, callback=None, noise=None, **options)``
returns the sample at sigma = 0; ``SAMPLER_INFO[name]`` says how many model evaluations it takes.
The contract, the pure-noise start and the notation are in ``base``; the samplers are in ``single``
(single-step) and ``multistep``.
"""

from __future__ import annotations

from difflab.samplers import multistep, single
from difflab.samplers.base import SAMPLER_INFO, SAMPLERS, SamplerInfo, ancestral_step, register, to_d
from difflab.samplers.multistep import (deis, deis_coefficients, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m_sde, lms,
                                        lms_coefficients, plms, unipc)
from difflab.samplers.single import (ddim, ddpm, dpm_2, dpm_2_ancestral, dpmpp_2s_ancestral, dpmpp_sde, euler,
                                     euler_ancestral, heun, lcm)
from difflab.settings import SAMPLER_NAMES


# The registry in the documented order; it stays the one dict that ``register`` fills.
_registered = dict(SAMPLERS)
SAMPLERS.clear()
SAMPLERS.update({name: _registered[name] for name in SAMPLER_NAMES})
del _registered

__all__ = ["SAMPLERS", "SAMPLER_INFO", "SAMPLER_NAMES", "SamplerInfo", "register", "to_d", "ancestral_step",
           "lms_coefficients", "deis_coefficients", *SAMPLER_NAMES]
