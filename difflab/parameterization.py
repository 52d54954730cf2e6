"""Parameterizations: what a network's output means, for sampling and for training alike.

One small object per kind (the model is k-diffusion's ``VDenoiser``; Karras et al. 2022, "EDM",
Sec. 5 and Table 1). With the network input ``x_in = c_in * x`` (VE ``x = x0 + sigma * eps``) and
its output ``F``, every kind is the affine map

    x0 = c_skip * x_in + c_out * F

and its training target is the ``F`` that maps to the true x0. Notation: VE ``sigma``; native
``alpha``, ``sigma_t`` with ``x_t = alpha * x = alpha x0 + sigma_t eps`` (``difflab.schedules``).

    kind          c_in        c_skip                     c_out                      target F
    epsilon       alpha       1 / alpha                  -sigma_t / alpha            eps               (Ho et al. 2020)
    v_prediction  alpha       alpha / (alpha^2+sigma_t^2) -sigma_t / (alpha^2+...)   alpha eps - sigma_t x0  (Salimans & Ho 2022, Sec. 4)
    sample        alpha       0                          1                          x0
    flow          alpha       1 / (alpha + sigma_t)      -sigma_t / (alpha+sigma_t)  eps - x0          (Liu et al. 2022, eq. 1)
    edm           1/sqrt(s^2+sd^2)  sd^2/(s^2+sd^2) / c_in   s sd / sqrt(s^2+sd^2)      (x0 - c_skip x_in)/c_out (Karras et al. 2022, Table 1)
    consistency   as edm      sd^2/((s-s_min)^2+sd^2)/c_in  sd (s-s_min)/sqrt(s^2+sd^2)  —   (Song et al. 2023, eq. 7 / App. C)
    lcm           as base     b_skip/c_in + b_out c_skip'  b_out c_out'               —   (Luo et al. 2023, eq. 9; base' = a native kind)

(``s`` = sigma, ``sd`` = sigma_data.) The native kinds see ``x_t`` itself, so at the pure-noise
endpoint (sigma = inf: alpha = 0, sigma_t = 1) a sampler passes the unit noise z = x_t and v, sample
and flow recover x0 exactly; epsilon cannot (x0 is 0/0), nor can EDM or consistency.

A new parameterization is a new class registered with :func:`register`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the formulas use tensor methods only: importing this module needs no torch
    import torch

PARAMETERIZATIONS: dict[str, type["Parameterization"]] = {}


def register(cls):
    PARAMETERIZATIONS[cls.name] = cls
    return cls


class Parameterization:
    """Base class. Coefficients take float64 ``alpha``, ``sigma_t`` tensors of shape [B]."""

    name = ""
    native = True                # the network sees x_t = alpha x (so c_in = alpha, 1 at pure noise)
    handles_pure_noise = True    # can give x0 from the unit noise at sigma = inf

    def c_in(self, alpha: torch.Tensor, sigma_t: torch.Tensor) -> torch.Tensor:
        """Scale from VE x to the network input."""
        return alpha.masked_fill(alpha == 0, 1.0)

    def coefficients(self, alpha: torch.Tensor, sigma_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(c_skip, c_out) with x0 = c_skip * x_in + c_out * F."""
        raise NotImplementedError

    def target(self, x0: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor, sigma_t: torch.Tensor):
        """The training target F at x_in = alpha x0 + sigma_t noise (alpha, sigma_t broadcastable)."""
        c_skip, c_out = self.coefficients(alpha, sigma_t)
        x_in = alpha * x0 + sigma_t * noise
        return (x0 - c_skip * x_in) / c_out

    def loss_weight(self, x0_weight: torch.Tensor, alpha: torch.Tensor, sigma_t: torch.Tensor) -> torch.Tensor:
        """A weight on the x0-space error as a weight on this output's error: w * c_out^2."""
        _, c_out = self.coefficients(alpha, sigma_t)
        return x0_weight * c_out**2

    def to_config(self):
        """What a package's ``diffusion.prediction_type`` holds: the name, or a dict with the options."""
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@register
class Epsilon(Parameterization):
    name = "epsilon"
    handles_pure_noise = False

    def coefficients(self, alpha, sigma_t):
        return 1 / alpha, -sigma_t / alpha

    def target(self, x0, noise, alpha, sigma_t):
        return noise


@register
class VPrediction(Parameterization):
    name = "v_prediction"

    def coefficients(self, alpha, sigma_t):
        norm = alpha**2 + sigma_t**2
        return alpha / norm, -sigma_t / norm

    def target(self, x0, noise, alpha, sigma_t):
        return alpha * noise - sigma_t * x0


@register
class Sample(Parameterization):
    name = "sample"

    def coefficients(self, alpha, sigma_t):
        return alpha.new_zeros(alpha.shape), alpha.new_ones(alpha.shape)

    def target(self, x0, noise, alpha, sigma_t):
        return x0


@register
class Flow(Parameterization):
    name = "flow"

    def coefficients(self, alpha, sigma_t):
        norm = alpha + sigma_t
        return 1 / norm, -sigma_t / norm

    def target(self, x0, noise, alpha, sigma_t):
        return noise - x0


@register
class EDM(Parameterization):
    """Karras et al. (2022), Table 1 ("Ours"): the network sees c_in * x, unit variance at every sigma."""

    name = "edm"
    native = False
    handles_pure_noise = False

    def __init__(self, sigma_data: float = 0.5):
        if not (isinstance(sigma_data, (int, float)) and sigma_data > 0):
            raise ValueError(f"sigma_data must be a positive number, got {sigma_data!r}")
        self.sigma_data = float(sigma_data)

    def c_in(self, alpha, sigma_t):
        sigma = sigma_t / alpha
        return 1 / (sigma**2 + self.sigma_data**2).sqrt()

    def coefficients(self, alpha, sigma_t):
        sigma, sd2 = sigma_t / alpha, self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        return c_skip / self.c_in(alpha, sigma_t), c_out  # c_skip acts on x = x_in / c_in

    def target(self, x0, noise, alpha, sigma_t):
        sigma = sigma_t / alpha
        x_in = self.c_in(alpha, sigma_t) * (x0 + sigma * noise)
        c_skip, c_out = self.coefficients(alpha, sigma_t)
        return (x0 - c_skip * x_in) / c_out

    def __repr__(self):
        return f"EDM(sigma_data={self.sigma_data})"


@register
class Consistency(EDM):
    """Song et al. (2023), eq. 7 and App. C: EDM's skip/output scalings shifted so that the
    boundary condition f(x, sigma_min) = x holds exactly (c_skip = 1, c_out = 0 at sigma_min)."""

    name = "consistency"

    def __init__(self, sigma_data: float = 0.5, sigma_min: float = 0.002):
        super().__init__(sigma_data)
        if not (isinstance(sigma_min, (int, float)) and sigma_min >= 0):
            raise ValueError(f"sigma_min must be a number >= 0, got {sigma_min!r}")
        self.sigma_min = float(sigma_min)

    def coefficients(self, alpha, sigma_t):
        sigma, sd2 = sigma_t / alpha, self.sigma_data**2
        c_skip = sd2 / ((sigma - self.sigma_min) ** 2 + sd2)
        c_out = (sigma - self.sigma_min) * self.sigma_data / (sigma**2 + sd2).sqrt()
        return c_skip / self.c_in(alpha, sigma_t), c_out

    def __repr__(self):
        return f"Consistency(sigma_data={self.sigma_data}, sigma_min={self.sigma_min})"


@register
class LatentConsistency(Parameterization):
    """The consistency function of a latent consistency model (Luo et al. 2023, eq. 9; Song et al.
    2023, eq. 7): ``f(x, sigma) = b_skip x + b_out x0_base`` where ``x0_base`` is what the network's
    output means under the teacher's own (native) parameterization ``base``, and the boundary
    scalings are

        b_skip = sd^2 / ((k (sigma - sigma_min))^2 + sd^2),   b_out = k (sigma - sigma_min) / sqrt((k (sigma - sigma_min))^2 + sd^2)

    so ``f(x, sigma_min) = x`` exactly (b_skip = 1, b_out = 0 there; the boundary condition) and,
    with the large ``scale`` k, ``f ~ x0_base`` at every other training step: a student that starts
    as its teacher's weights starts as its teacher. ``sigma_min`` is the teacher schedule's smallest
    sigma (model time 0); LCM's own scalings use the timestep ``10 t`` in place of k (sigma - sigma_min).
    At the pure-noise endpoint (alpha = 0) b_skip = 0, b_out = 1: f is the base's x0 from the noise.
    """

    name = "lcm"

    def __init__(self, base: str = "v_prediction", sigma_min: float = 0.0, sigma_data: float = 0.5,
                 scale: float = 1000.0):
        if base not in PARAMETERIZATIONS or not PARAMETERIZATIONS[base].native or base == self.name:
            raise ValueError(f"lcm base must be a native parameterization (epsilon, v_prediction, sample, flow), got {base!r}")
        for label, value in (("sigma_min", sigma_min), ("sigma_data", sigma_data), ("scale", scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
                raise ValueError(f"lcm {label} must be a finite number >= 0, got {value!r}")
        self.base = PARAMETERIZATIONS[base]()
        self.handles_pure_noise = self.base.handles_pure_noise
        self.sigma_min, self.sigma_data, self.scale = float(sigma_min), float(sigma_data), float(scale)

    def boundary(self, alpha, sigma_t):
        """(b_skip, b_out) at the VE sigma = sigma_t / alpha; exactly (1, 0) at sigma_min."""
        pure = alpha == 0
        sigma = sigma_t / alpha.masked_fill(pure, 1.0)
        offset = sigma - self.sigma_min      # sigma_min after a float round trip through (alpha, sigma_t) is sigma_min
        k = self.scale * offset.masked_fill(offset.abs() <= 1e-9 * self.sigma_min, 0.0)
        b_skip = self.sigma_data**2 / (k**2 + self.sigma_data**2)
        b_out = k / (k**2 + self.sigma_data**2).sqrt()
        return b_skip.masked_fill(pure, 0.0), b_out.masked_fill(pure, 1.0)

    def coefficients(self, alpha, sigma_t):
        b_skip, b_out = self.boundary(alpha, sigma_t)
        c_skip, c_out = self.base.coefficients(alpha, sigma_t)
        return b_skip / self.c_in(alpha, sigma_t) + b_out * c_skip, b_out * c_out

    def to_config(self) -> dict:
        return {"type": self.name, "base": self.base.name, "sigma_min": self.sigma_min,
                "sigma_data": self.sigma_data, "scale": self.scale}

    def __repr__(self):
        return f"LatentConsistency(base={self.base.name}, sigma_min={self.sigma_min:.6g}, scale={self.scale:g})"


def get_parameterization(kind) -> Parameterization:
    """A name (``"epsilon"``, ``"v_prediction"``, ``"sample"``, ``"flow"``, ``"edm"``,
    ``"consistency"``, ``"lcm"``), a ``{"type": name, **options}`` dict, or a Parameterization -> the object."""
    if isinstance(kind, Parameterization):
        return kind
    options = {}
    if isinstance(kind, dict):
        options = {k: v for k, v in kind.items() if k != "type"}
        kind = kind.get("type")
    if kind not in PARAMETERIZATIONS:
        raise ValueError(f"prediction_type must be one of {tuple(PARAMETERIZATIONS)}, got {kind!r}")
    try:
        return PARAMETERIZATIONS[kind](**options)
    except TypeError as error:
        raise ValueError(f"bad options for the {kind} parameterization: {error}") from None
