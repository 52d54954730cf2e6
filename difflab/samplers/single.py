"""Single-step samplers: each step uses only the denoiser outputs of that step.

Registered in ``difflab.SAMPLERS``; the call and the notation are those of ``difflab.samplers.base``.
"""

from __future__ import annotations

import math

from difflab.samplers.base import _ancestral, _dpmpp_step, _Run, ancestral_step, register, to_d


# ----- first-order and ancestral ---------------------------------------------------------------
@register("euler", order=1)
def euler(denoiser, x, sigmas, extra_args=None, callback=None, noise=None):
    """Euler steps of the PF-ODE (Karras et al. 2022, Algorithm 2 without churn)."""
    run, x, sigmas = _Run.begin(denoiser, x, sigmas, extra_args, callback, noise)
    for i in range(len(sigmas) - 1):
        x0 = run.denoise(i, x, sigmas[i])
        x = x + to_d(x, sigmas[i], x0) * (sigmas[i + 1] - sigmas[i])
    return x


@register("euler_ancestral", stochastic=True, order=1)
def euler_ancestral(denoiser, x, sigmas, extra_args=None, callback=None, noise=None, eta=1.0, s_noise=1.0):
    """Ancestral Euler: an Euler step to sigma_down, then noise to sigma_next (k-diffusion)."""
    run, x, sigmas = _Run.begin(denoiser, x, sigmas, extra_args, callback, noise, eta, s_noise)
    return _ancestral(run, x, sigmas, eta, s_noise)


@register("ddim", order=1)
def ddim(denoiser, x, sigmas, extra_args=None, callback=None, noise=None, eta=0.0):
    """DDIM (Song et al. 2021, eq. 12). In VE coordinates its eta-step is exactly the ancestral
    step: x0 + sigma_down * eps + sigma_up * z with sigma_up = eta * sigma_t-1 sqrt(1 - sigma_t-1^2 / sigma_t^2)
    (eq. 16 divided by alpha_t-1). eta = 0 is deterministic and equals Euler."""
    run, x, sigmas = _Run.begin(denoiser, x, sigmas, extra_args, callback, noise, eta)
    return _ancestral(run, x, sigmas, eta, 1.0)


@register("ddpm", stochastic=True, order=1)
def ddpm(denoiser, x, sigmas, extra_args=None, callback=None, noise=None):
    """Ancestral sampling from DDPM's posterior q(x_t-1 | x_t, x0) (Ho et al. 2020, eqs. 6-7) with
    variance beta-tilde: DDIM with eta = 1 (Song et al. 2021, Sec. 4.1), on any grid."""
    run, x, sigmas = _Run.begin(denoiser, x, sigmas, extra_args, callback, noise, 1.0)
    return _ancestral(run, x, sigmas, 1.0, 1.0)


@register("lcm", stochastic=True, order=1)
def lcm(denoiser, x, sigmas, extra_args=None, callback=None, noise=None):
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1; LCM, Luo et al. 2023): predict
    x0, then re-noise it to the next level with fresh noise. A distilled model's boundary
    conditions (c_skip, c_out) belong to its denoiser, not here."""
    run, x, sigmas = _Run.begin(denoiser, x, sigmas, extra_args, callback, noise, 1.0)
    for i in range(len(sigmas) - 1):
        x = x0 = run(x, sigmas[i])
        run.report(i, x, sigmas[i], x0)
        if sigmas[i + 1] > 0:
            x = x0 + run.noise(x, i) * sigmas[i + 1]
    return x


# ----- second-order single-step ---------------------------------------------------------------
@register("heun", order=2, evals_per_step=2)
def heun(denoiser, x, sigmas, extra_args=None, callback=None, noise=None):
    """Heun's method, Euler on the last step to sigma = 0 (Karras et al. 2022, Algorithm 1)."""
    run, x, sigmas = _Run.begin(denoiser, x, sigmas, extra_args, callback, noise)
    for i in range(len(sigmas) - 1):
        x0 = run.denoise(i, x, sigmas[i])
        d = to_d(x, sigmas[i], x0)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
            continue
        x_next = x + d * dt
        d_next = to_d(x_next, sigmas[i + 1], run(x_next, sigmas[i + 1]))
        x = x + (d + d_next) / 2 * dt
    return x


def _dpm2_step(run, x, x0, sigma, sigma_to):
    """Midpoint in log sigma (DPM-Solver-2 in the form of Karras et al. 2022, Sec. 4)."""
    d = to_d(x, sigma, x0)
    if sigma_to == 0:
        return x + d * (sigma_to - sigma)
    sigma_mid = math.exp((math.log(sigma) + math.log(sigma_to)) / 2)
    x_mid = x + d * (sigma_mid - sigma)
    return x + to_d(x_mid, sigma_mid, run(x_mid, sigma_mid)) * (sigma_to - sigma)


@register("dpm_2", order=2, evals_per_step=2)
def dpm_2(denoiser, x, sigmas, extra_args=None, callback=None, noise=None):
    """DPM-Solver-2 with the midpoint in log sigma (Lu et al. 2022; Karras et al. 2022, Sec. 4)."""
    return dpm_2_ancestral(denoiser, x, sigmas, extra_args, callback, noise, eta=0.0)  # sigma_down = sigma_next


@register("dpm_2_ancestral", stochastic=True, order=2, evals_per_step=2)
def dpm_2_ancestral(denoiser, x, sigmas, extra_args=None, callback=None, noise=None, eta=1.0, s_noise=1.0):
    """DPM-Solver-2 to sigma_down, then noise to the next level (k-diffusion's ancestral form)."""
    run, x, sigmas = _Run.begin(denoiser, x, sigmas, extra_args, callback, noise, eta, s_noise)
    return _ancestral(run, x, sigmas, eta, s_noise, _dpm2_step)


def _dpmpp_2s_step(run, x, x0, sigma, sigma_to):
    """DPM-Solver++(2S) with r = 1/2: a first-order half step in lam, then the full step with the
    model's x0 there (Lu et al. 2022b, Algorithm 1)."""
    if sigma_to == 0:
        return x0
    h = math.log(sigma / sigma_to)
    sigma_mid = sigma * math.exp(-h / 2)
    x_mid = _dpmpp_step(x, x0, sigma, sigma_mid, h / 2)
    return _dpmpp_step(x, run(x_mid, sigma_mid), sigma, sigma_to, h)


@register("dpmpp_2s_ancestral", stochastic=True, order=2, evals_per_step=2)
def dpmpp_2s_ancestral(denoiser, x, sigmas, extra_args=None, callback=None, noise=None, eta=1.0, s_noise=1.0):
    """DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1, r = 1/2) to sigma_down, then ancestral noise."""
    run, x, sigmas = _Run.begin(denoiser, x, sigmas, extra_args, callback, noise, eta, s_noise)
    return _ancestral(run, x, sigmas, eta, s_noise, _dpmpp_2s_step)


@register("dpmpp_sde", stochastic=True, order=2, evals_per_step=2)
def dpmpp_sde(denoiser, x, sigmas, extra_args=None, callback=None, noise=None, eta=1.0, s_noise=1.0, r=0.5):
    """DPM-Solver++ SDE, two stages per step (k-diffusion's dpmpp_sde after Lu et al. 2022b).

    The two noises of a step are increments of one Brownian path over sigma: the stage-1 draw covers
    [sigma_i, sigma_s], the stage-2 draw [sigma_i, sigma_i+1] and contains it (a Brownian bridge
    made of two independent stream draws)."""
    run, x, sigmas = _Run.begin(denoiser, x, sigmas, extra_args, callback, noise, eta, s_noise)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = run.denoise(i, x, sigma)
        if sigma_next == 0:
            x = x0
            continue
        h = math.log(sigma / sigma_next)
        sigma_s = sigma * math.exp(-r * h)
        w_first, w_rest = run.noise(x, i, 0), run.noise(x, i, 1)
        span, span_first = sigma - sigma_next, sigma - sigma_s
        noise_first = w_first
        noise_full = (w_first * math.sqrt(span_first) + w_rest * math.sqrt(span - span_first)) / math.sqrt(span)
        # stage 1: to the intermediate level s
        down, up = ancestral_step(sigma, sigma_s, eta)
        x_s = _dpmpp_step(x, x0, sigma, down, math.log(sigma / down))
        x_s = x_s + noise_first * s_noise * up
        x0_s = run(x_s, sigma_s)
        # stage 2: to sigma_next with the blended data prediction
        down, up = ancestral_step(sigma, sigma_next, eta)
        x0_d = (1 - 1 / (2 * r)) * x0 + 1 / (2 * r) * x0_s
        x = _dpmpp_step(x, x0_d, sigma, down, math.log(sigma / down))
        x = x + noise_full * s_noise * up
    return x
