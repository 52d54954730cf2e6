"""Multistep samplers: each step reuses the denoiser outputs of earlier steps (one NFE per step).

Registered in ``difflab.SAMPLERS``; the call and the notation are those of ``difflab.samplers.base``
(``d`` = dx/dsigma, ``lam = -log sigma``, ``h`` a step in ``lam``). Histories are local lists.
"""

from __future__ import annotations

import math

import numpy as np

from difflab.samplers.base import _data_multistep, _dpmpp_step, _Run, register, to_d


# ----- linear multistep in sigma ---------------------------------------------------------------
def _lagrange_basis(nodes: list[float], j: int) -> np.polynomial.Polynomial:
    """The Lagrange basis polynomial that is 1 at nodes[j] and 0 at the other nodes."""
    basis = np.polynomial.Polynomial([1.0])
    for k, node in enumerate(nodes):
        if k != j:
            basis = basis * np.polynomial.Polynomial([-node, 1.0]) / (nodes[j] - node)
    return basis


def lms_coefficients(sigmas: list[float], i: int, order: int) -> list[float]:
    """Adams-Bashforth weights on a non-uniform grid: integrals over [sigma_i, sigma_i+1] of the
    Lagrange basis through sigma_i, sigma_i-1, ... (exact polynomial integration)."""
    nodes = [sigmas[i - j] for j in range(order)]
    weights = []
    for j in range(order):
        antiderivative = _lagrange_basis(nodes, j).integ()
        weights.append(float(antiderivative(sigmas[i + 1]) - antiderivative(sigmas[i])))
    return weights


@register("lms", order=4)
def lms(denoiser, x, sigmas, extra_args=None, callback=None, noise=None, order=4):
    """Linear multistep (Adams-Bashforth) on the PF-ODE in sigma, as k-diffusion's ``sample_lms``."""
    run, x, sigmas = _Run.begin(denoiser, x, sigmas, extra_args, callback, noise)
    ds = []
    for i in range(len(sigmas) - 1):
        x0 = run.denoise(i, x, sigmas[i])
        ds = (ds + [to_d(x, sigmas[i], x0)])[-order:]
        weights = lms_coefficients(sigmas, i, min(i + 1, order))
        x = x + sum(w * d for w, d in zip(weights, reversed(ds)))
    return x


_AB_WEIGHTS = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


@register("plms", order=4, extra_first=1)
def plms(denoiser, x, sigmas, extra_args=None, callback=None, noise=None):
    """PLMS, the pseudo linear multistep method of PNDM (Liu et al. 2022, eqs. 11-12), with
    diffusers' start for ``skip_prk_steps``: the first step is a pseudo improved-Euler step
    (two evaluations), then Adams-Bashforth on eps of orders 2, 3, 4 with the DDIM transfer
    x' = x + (sigma' - sigma) * eps (eq. 9 in VE form)."""
    run, x, sigmas = _Run.begin(denoiser, x, sigmas, extra_args, callback, noise)
    eps_history = []
    for i in range(len(sigmas) - 1):
        x0 = run.denoise(i, x, sigmas[i])
        eps = to_d(x, sigmas[i], x0)
        dt = sigmas[i + 1] - sigmas[i]
        if not eps_history:
            x_pred = x + eps * dt
            if sigmas[i + 1] > 0:
                eps = (eps + to_d(x_pred, sigmas[i + 1], run(x_pred, sigmas[i + 1]))) / 2
            eps_history.append(to_d(x, sigmas[i], x0))
            x = x + eps * dt
            continue
        eps_history = (eps_history + [eps])[-4:]
        weights = _AB_WEIGHTS[len(eps_history)]
        x = x + sum(w * e for w, e in zip(weights, reversed(eps_history))) * dt
    return x


# ----- DPM-Solver++ multistep (data prediction) ------------------------------------------------
@register("dpmpp_2m", order=2)
def dpmpp_2m(denoiser, x, sigmas, extra_args=None, callback=None, noise=None):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): first order on the first and final steps."""
    run, x, sigmas = _Run.begin(denoiser, x, sigmas, extra_args, callback, noise)

    def step(i, x, x0, h, x0s, hs):
        x0_d = x0
        if x0s:
            r = hs[0] / h
            x0_d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0s[0]
        return _dpmpp_step(x, x0_d, sigmas[i], sigmas[i + 1], h)

    return _data_multistep(run, x, sigmas, step)


@register("dpmpp_2m_sde", stochastic=True, order=2)
def dpmpp_2m_sde(denoiser, x, sigmas, extra_args=None, callback=None, noise=None, eta=1.0, s_noise=1.0,
                 solver_type="midpoint"):
    """DPM-Solver++(2M) SDE (Lu et al. 2022b, Sec. 5 / Appendix; k-diffusion's form), midpoint or heun."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    run, x, sigmas = _Run.begin(denoiser, x, sigmas, extra_args, callback, noise, eta, s_noise)

    def step(i, x, x0, h, x0s, hs):
        eta_h = eta * h
        x = (sigmas[i + 1] / sigmas[i]) * math.exp(-eta_h) * x - math.expm1(-h - eta_h) * x0
        if x0s:
            r = hs[0] / h
            if solver_type == "midpoint":
                x = x - 0.5 * math.expm1(-h - eta_h) * (x0 - x0s[0]) / r
            else:
                x = x + (-math.expm1(-h - eta_h) / (-h - eta_h) + 1) * (x0 - x0s[0]) / r
        if eta:
            x = x + run.noise(x, i) * sigmas[i + 1] * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise
        return x

    return _data_multistep(run, x, sigmas, step)


@register("dpmpp_3m_sde", stochastic=True, order=3)
def dpmpp_3m_sde(denoiser, x, sigmas, extra_args=None, callback=None, noise=None, eta=1.0, s_noise=1.0):
    """DPM-Solver++(3M) SDE (Lu et al. 2022b, third-order multistep; k-diffusion's form)."""
    run, x, sigmas = _Run.begin(denoiser, x, sigmas, extra_args, callback, noise, eta, s_noise)

    def step(i, x, x0, h, x0s, hs):
        h_eta = h * (eta + 1)
        x = math.exp(-h_eta) * x - math.expm1(-h_eta) * x0
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        if len(x0s) >= 1:
            d1_0 = (x0 - x0s[0]) / (hs[0] / h)
            if len(x0s) >= 2:
                r0, r1 = hs[0] / h, hs[1] / h
                d1_1 = (x0s[0] - x0s[1]) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
            else:
                x = x + phi_2 * d1_0
        if eta:
            x = x + run.noise(x, i) * sigmas[i + 1] * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise
        return x

    return _data_multistep(run, x, sigmas, step)


# ----- UniPC -----------------------------------------------------------------------------------
def _unipc_system(h: float, rks: list[float], order: int, variant: str):
    """R (order x order), b, B(h) and phi_1 of UniPC's data-prediction update (Zhao et al. 2023,
    Algorithms 1-2 with B(h) = h for bh1 and e^h - 1 for bh2; written in hh = -h)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else math.expm1(hh)
    factorial, R, b = 1, [], []
    for k in range(1, order + 1):
        R.append([rk ** (k - 1) for rk in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return np.array(R), np.array(b), b_h, h_phi_1


def _combine(weights, tensors):
    return sum(float(w) * t for w, t in zip(weights, tensors))


@register("unipc", order=3)
def unipc(denoiser, x, sigmas, extra_args=None, callback=None, noise=None, order=2, variant="bh2",
          lower_order_final=True, corrector=True):
    """UniPC (Zhao et al. 2023): UniP-p predictor + UniC corrector on the data prediction. The
    corrector reuses the evaluation at the new point, so it raises the order at no extra NFE.
    Defaults are diffusers' UniPCMultistepScheduler (order 2, bh2, lower order on the final steps)."""
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    run, x, sigmas = _Run.begin(denoiser, x, sigmas, extra_args, callback, noise)
    n = len(sigmas) - 1
    history, last = [], None  # history: (lam, x0), newest last; last: state of the previous predictor
    for i in range(n):
        x0 = run.denoise(i, x, sigmas[i])
        if corrector and last is not None:
            x = _unic(last, x0)
        lam = -math.log(sigmas[i])
        history = (history + [(lam, x0)])[-3:]
        if sigmas[i + 1] == 0:
            x = x0
            break
        this_order = min(order, n - i if lower_order_final else order, len(history))
        last = _unip(x, sigmas[i], sigmas[i + 1], history, this_order, variant)
        x = last["x_next"]
    return x


def _unip(x, sigma, sigma_next, history, order, variant):
    """UniP-p: predict x at sigma_next; returns what the corrector needs at the next point."""
    lam0, m0 = history[-1]
    h = math.log(sigma / sigma_next)
    rks = [(history[-(k + 1)][0] - lam0) / h for k in range(1, order)]
    D1s = [(history[-(k + 1)][1] - m0) / rk for k, rk in zip(range(1, order), rks)]
    R, b, b_h, h_phi_1 = _unipc_system(h, rks + [1.0], order, variant)
    x_base = (sigma_next / sigma) * x - h_phi_1 * m0
    if order == 1:
        x_next = x_base
    else:
        rhos_p = [0.5] if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
        x_next = x_base - b_h * _combine(rhos_p, D1s)
    return {"x_base": x_base, "m0": m0, "D1s": D1s, "R": R, "b": b, "b_h": b_h, "order": order, "x_next": x_next}


def _unic(last, x0_new):
    """UniC: correct the predicted point with the model's output there (same h, r_k and D1s)."""
    rhos_c = [0.5] if last["order"] == 1 else np.linalg.solve(last["R"], last["b"])
    correction = _combine(rhos_c[:-1], last["D1s"]) + float(rhos_c[-1]) * (x0_new - last["m0"])
    return last["x_base"] - last["b_h"] * correction


# ----- DEIS ------------------------------------------------------------------------------------
def deis_coefficients(sigmas_hist: list[float], sigma_next: float) -> list[float]:
    """Weights of eps_j in x' = x + sum_j w_j eps_j: the integral over rho (= sigma) from
    sigma_hist[0] to sigma_next of the Lagrange basis in log rho (Zhang & Chen 2022, "logrho"
    DEIS, eq. 14). With u = log rho, the antiderivative of e^u P(u) is e^u sum_k (-1)^k P^(k)(u)."""
    nodes = [math.log(s) for s in sigmas_hist]
    weights = []
    for j in range(len(nodes)):
        basis = _lagrange_basis(nodes, j)
        weights.append(_exp_poly_antiderivative(basis, sigma_next) - _exp_poly_antiderivative(basis, sigmas_hist[0]))
    return weights


def _exp_poly_antiderivative(poly: np.polynomial.Polynomial, rho: float) -> float:
    if rho == 0:
        return 0.0  # e^u P(u) -> 0 as u -> -inf
    u, total, sign, p = math.log(rho), 0.0, 1.0, poly
    for _ in range(poly.degree() + 1):
        total += sign * p(u)
        p, sign = p.deriv(), -sign
    return rho * total


@register("deis", order=3)
def deis(denoiser, x, sigmas, extra_args=None, callback=None, noise=None, order=3, lower_order_final=True):
    """DEIS multistep with the log-rho polynomial extrapolation of eps (Zhang & Chen 2022, Sec. 4),
    order 3 by default (diffusers' DEISMultistepScheduler defaults to 2; 3 measured better here), with
    diffusers' rule of lower orders on the last two steps of runs shorter than 15 steps."""
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    run, x, sigmas = _Run.begin(denoiser, x, sigmas, extra_args, callback, noise)
    n = len(sigmas) - 1
    eps_hist, sigma_hist = [], []  # newest first
    for i in range(n):
        x0 = run.denoise(i, x, sigmas[i])
        eps_hist = [to_d(x, sigmas[i], x0)] + eps_hist[:order - 1]
        sigma_hist = [sigmas[i]] + sigma_hist[:order - 1]
        this_order = len(eps_hist)
        if lower_order_final and n < 15:
            this_order = min(this_order, n - i)
        weights = deis_coefficients(sigma_hist[:this_order], sigmas[i + 1])
        x = x + _combine(weights, eps_hist[:this_order])
    return x
