"""Path straightness of a sampler's ODE (Liu et al. 2022, "Flow straight and fast", Sec. 2.3, eq. 5).

    S = integral_0^1 E || (z - x1) - v(x_t, t) ||^2 dt

in rectified-flow coordinates x_t = (1 - t) x1 + t z, where every Gaussian diffusion ODE can be
written: VE sigma = t / (1 - t), x_t = x_VE / (1 + sigma), and the velocity of a denoiser's ODE is
v = (x_t - x0(x_t)) / t. S = 0 exactly when every path is a straight line (one Euler step is then
exact); a teacher's curved paths give S > 0, and reflow lowers it. Any model enters through its
denoiser (``x0_of(x_VE, sigma)``, the sampling contract; at sigma = inf it gets the unit noise).
"""

from __future__ import annotations

import math

import torch


def path_straightness(x0_of, z: torch.Tensor, steps: int = 50) -> tuple[float, torch.Tensor]:
    """(S averaged over samples and elements, the end points x1): Euler in flow time over
    ``steps`` uniform steps from t = 1 (the noise z) to t = 0."""
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    x, velocities = z.clone(), []
    with torch.no_grad():
        for t, t_next in zip(ts[:-1].tolist(), ts[1:].tolist()):
            sigma = math.inf if t == 1.0 else t / (1 - t)
            x0 = x0_of(x if t == 1.0 else x * (1 + sigma), sigma)   # VE x = x_t / alpha_t, alpha_t = 1 - t
            v = (x - x0) / t
            velocities.append(v)
            x = x + (t_next - t) * v
    straight = z - x
    per_step = torch.stack([(straight - v).pow(2).mean() for v in velocities])
    return float(per_step.mean()), x
