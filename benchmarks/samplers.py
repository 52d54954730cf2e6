"""Sampler error against NFE, and per-step overhead: difflab beside diffusers, in one run.

    difflab bench samplers [--quick] [--out DIR]        (or: python benchmarks/samplers.py ...)

Problems with known answers (Gaussian and Gaussian-mixture data, exact denoisers from
``difflab.testing.gaussian``) in three settings: VE (EDM's sigma range, Karras / exponential grids),
discrete VP (Stable Diffusion's scaled-linear betas, an epsilon model ``NativeModel``) and rectified
flow (shift 3, a velocity model). Every difflab sampler runs on every spacing; diffusers' schedulers
run in their default configuration (constructor defaults + the problem's betas / shift).

Metrics, all against the same unit noise z:
- ``ode``: RMS distance to the exact probability-flow ODE solution from the schedule's top
  (t = T - 1 for VP, sigma_max for VE, pure noise for flow), deterministic samplers. Gaussian: closed
  form; mixture: DOP853 at rtol 1e-10. Starting lower (e.g. 'leading') counts as error.
- ``w2``: per-dimension 2-Wasserstein distance between the Gaussian with the samples' mean / std
  and the data's, RMS over dimensions. On Gaussian data every sampler is affine in (z, noise draws),
  so mean and variance are computed exactly from one batch of basis inputs (no Monte Carlo error);
  on the mixture it is Monte Carlo over many samples (its floor: the same statistic of exact samples).
Overhead: wall time per model evaluation with a trivial model on a [1, 4] tensor, whole loop
(grid set-up, input scaling, update), difflab ``sample`` vs diffusers' loop; and difflab's sampler alone.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch

import difflab
from difflab import Denoiser, NoiseSchedule
from difflab.samplers import SAMPLER_INFO, SAMPLERS
from difflab.testing.gaussian import GaussianMixture, NativeModel

sys.path.insert(0, str(Path(__file__).resolve().parent))   # its sibling, also when the CLI loads it by path
from samplers_report import compact, machine, markdown, plot  # noqa: E402

NFES, QUICK_NFES = (4, 5, 6, 8, 10, 12, 15, 20, 30, 50), (5, 10, 20)
SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
FLOW_SHIFT = 3.0
EDM_SIGMA_MIN, EDM_SIGMA_MAX = 0.002, 80.0
DIM = 8


GAUSS = GaussianMixture.gaussian(torch.linspace(-1.5, 1.5, DIM).tolist(), torch.logspace(-2, 0, DIM).tolist())
_g = torch.Generator().manual_seed(7)
MIXTURE = GaussianMixture([0.25, 0.45, 0.3], torch.randn(3, DIM, generator=_g, dtype=torch.float64).tolist(),
                          (0.02 + 0.3 * torch.rand(3, DIM, generator=_g, dtype=torch.float64)).tolist())


# ----- problems ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    name: str                       # ve | vp | flow
    schedule: NoiseSchedule | None  # None: VE with the exact denoiser, EDM's range
    prediction_type: str
    spacings: tuple
    default_spacing: str

    def grid(self, spacing: str, steps: int) -> torch.Tensor:
        if self.schedule is not None:
            return self.schedule.sigmas(steps, spacing)
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        lo, hi = EDM_SIGMA_MIN, EDM_SIGMA_MAX
        if spacing == "karras":   # Karras et al. (2022), eq. 5, rho = 7
            sigmas = (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
        else:
            sigmas = torch.exp(math.log(hi) + ramp * (math.log(lo) - math.log(hi)))
        return torch.cat([sigmas, sigmas.new_zeros(1)])

    def start(self, z: torch.Tensor, sigma0: float) -> torch.Tensor:
        """difflab.sample's start: VP native x_T = z, i.e. VE z / alpha; z itself at sigma = inf."""
        if math.isinf(sigma0):
            return z
        if self.schedule is None:
            return z * sigma0
        return z / float(self.schedule.alpha_sigma(sigma0)[0])

    def top(self) -> float:
        """Where the ideal sampler starts: the largest level of the schedule."""
        return EDM_SIGMA_MAX if self.schedule is None else self.schedule.sigma_max

    def denoiser(self, data):
        if self.schedule is None:
            return lambda x, sigma, **kwargs: data.denoise(x, sigma)
        return Denoiser(self.model(data), self.schedule, self.prediction_type)

    def model(self, data):
        return NativeModel(data, self.schedule, self.prediction_type)


SETTINGS = {
    "ve": Setting("ve", None, "sample", ("karras", "exponential"), "karras"),
    "vp": Setting("vp", NoiseSchedule.scaled_linear(), "epsilon",
                  ("leading", "trailing", "linspace", "karras", "exponential"), "trailing"),
    "flow": Setting("flow", NoiseSchedule.flow(FLOW_SHIFT), "flow", ("linspace", "trailing", "karras", "exponential"),
                    "linspace"),
}


def reference(data, setting: Setting, z: torch.Tensor) -> torch.Tensor:
    """Exact PF-ODE solution from the schedule's top. Closed form for one Gaussian; otherwise DOP853
    in flow time u = sigma / (1 + sigma), y = x / (1 + sigma): dy/du = (y - D) / u, finite at u = 1."""
    from scipy.integrate import solve_ivp

    top = setting.top()
    x_top = setting.start(z.double(), top)
    if len(data.weights) == 1:
        mu, var = data.means[0], data.variances[0]
        return mu + z.double() * var.sqrt() if math.isinf(top) else data.exact_ode_solution(x_top, top)
    prior_mean = (data.weights[:, None] * data.means).sum(0)

    def velocity(u, y):
        y = torch.from_numpy(y).view(z.shape)
        x0 = prior_mean.expand_as(y) if u >= 1 else data.denoise(y / (1 - u), u / (1 - u))
        return ((y - x0) / u).ravel().numpy()

    u0 = 1.0 if math.isinf(top) else top / (1 + top)
    y0 = x_top if math.isinf(top) else x_top / (1 + top)
    u_end = 1e-6
    solution = solve_ivp(velocity, (u0, u_end), y0.ravel().numpy(), method="DOP853", rtol=1e-10, atol=1e-12)
    y_end = torch.from_numpy(solution.y[:, -1]).view(z.shape)
    return data.denoise(y_end / (1 - u_end), u_end / (1 - u_end))


# ----- noise: exact moments from basis inputs, or Monte Carlo ---------------------------------------
class BasisNoise:
    """Draw k is 1 in batch row 2 + k and 0 elsewhere (row 0: all-zero input, row 1: z = 1). The
    output is affine in every input, so row 0 is the mean and the other rows minus it the
    coefficients: var = sum of their squares."""

    def __init__(self, rows: int):
        self.rows, self.draws = rows, 0

    def __call__(self, like_or_shape, *args, **kwargs):
        shape = like_or_shape.shape if isinstance(like_or_shape, torch.Tensor) else tuple(like_or_shape)
        if 2 + self.draws >= self.rows:
            raise RuntimeError("more noise draws than basis rows")
        noise = torch.zeros(shape, dtype=kwargs.get("dtype") or torch.float32)
        noise[2 + self.draws] = 1.0
        self.draws += 1
        return noise

    def inputs(self) -> torch.Tensor:
        z = torch.zeros(self.rows, DIM)
        z[1] = 1.0
        return z

    def moments(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = out.double()
        mean = out[0]
        return mean, ((out[1:] - mean) ** 2).sum(0).sqrt()


def monte_carlo_noise(like_or_shape, *args, **kwargs):
    shape = like_or_shape.shape if isinstance(like_or_shape, torch.Tensor) else tuple(like_or_shape)
    return torch.randn(shape, dtype=kwargs.get("dtype") or torch.float32)


class BrownianIncrements:
    """diffusers' DPMSolverSDE asks (sigma, sigma_s) then (sigma, sigma_next) of one Brownian path;
    built here from two independent draws (the bridge), so basis and Monte Carlo noise both work."""

    def __init__(self, draw):
        self.draw, self.start, self.first = draw, None, None

    def __call__(self, sigma, sigma_next):
        sigma, sigma_next = float(sigma), float(sigma_next)
        if sigma != self.start:
            self.start, self.first = sigma, (sigma_next, self.draw(self.like))
            return self.first[1]
        mid, w_first = self.first
        w_rest = self.draw(self.like)
        span, span_first = abs(sigma - sigma_next), abs(sigma - mid)
        return (w_first * math.sqrt(span_first) + w_rest * math.sqrt(span - span_first)) / math.sqrt(span)


def gaussian_w2(mean, std, data) -> float:
    """RMS over dimensions of W2(N(mean, std^2), N(data mean, data std^2)) (the data's moments)."""
    data_mean = (data.weights[:, None] * data.means).sum(0)
    second = (data.weights[:, None] * (data.variances + data.means**2)).sum(0)
    data_std = (second - data_mean**2).sqrt()
    return float((((mean - data_mean) ** 2 + (std - data_std) ** 2).mean()).sqrt())


# ----- runners ----------------------------------------------------------------------------------------
class Counted:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def difflab_steps(sampler: str, nfe: int, inf_start: bool) -> int:
    info = SAMPLER_INFO[sampler]
    evals = (lambda n: 1 + (info.evals(n - 1) if n > 1 else 0)) if inf_start else info.evals
    fitting = [n for n in range(1, nfe + 1) if evals(n) <= nfe]
    return max(fitting) if fitting else 0


def run_difflab(setting, data, sampler, spacing, nfe, z, noise=None):
    inf_start = math.isinf(float(setting.grid(spacing, 2)[0]))
    steps = difflab_steps(sampler, nfe, inf_start)
    if steps == 0:
        return None, 0
    sigmas = setting.grid(spacing, steps)
    denoiser = Counted(setting.denoiser(data))
    with torch.no_grad():
        out = SAMPLERS[sampler](denoiser, setting.start(z, float(sigmas[0])), sigmas, noise=noise)
    return out, denoiser.calls


@dataclass(frozen=True)
class DiffusersSpec:
    label: str
    sampler: str          # difflab's sampler of the same algorithm
    make: object          # () -> scheduler, default configuration
    stochastic: bool = False


def diffusers_specs(setting: str) -> list[DiffusersSpec]:
    import diffusers as d

    if setting == "flow":
        flow_sigmas = dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=FLOW_SHIFT)
        return [DiffusersSpec("FlowMatchEulerDiscrete", "euler",
                              lambda: d.FlowMatchEulerDiscreteScheduler(shift=FLOW_SHIFT)),
                DiffusersSpec("FlowMatchHeunDiscrete", "heun",
                              lambda: d.FlowMatchHeunDiscreteScheduler(shift=FLOW_SHIFT)),
                DiffusersSpec("DPMSolverMultistep (flow sigmas)", "dpmpp_2m",
                              lambda: d.DPMSolverMultistepScheduler(**flow_sigmas)),
                DiffusersSpec("UniPCMultistep (flow sigmas)", "unipc",
                              lambda: d.UniPCMultistepScheduler(**flow_sigmas))]
    if setting != "vp":
        return []
    s = SD_BETAS
    return [DiffusersSpec("DDIM", "ddim", lambda: d.DDIMScheduler(**s, clip_sample=False)),
            DiffusersSpec("PNDM (skip_prk_steps)", "plms", lambda: d.PNDMScheduler(**s, skip_prk_steps=True)),
            DiffusersSpec("EulerDiscrete", "euler", lambda: d.EulerDiscreteScheduler(**s)),
            DiffusersSpec("HeunDiscrete", "heun", lambda: d.HeunDiscreteScheduler(**s)),
            DiffusersSpec("LMSDiscrete", "lms", lambda: d.LMSDiscreteScheduler(**s)),
            DiffusersSpec("KDPM2Discrete", "dpm_2", lambda: d.KDPM2DiscreteScheduler(**s)),
            DiffusersSpec("DPMSolverMultistep", "dpmpp_2m", lambda: d.DPMSolverMultistepScheduler(**s)),
            DiffusersSpec("UniPCMultistep", "unipc", lambda: d.UniPCMultistepScheduler(**s)),
            DiffusersSpec("DEISMultistep", "deis", lambda: d.DEISMultistepScheduler(**s)),
            DiffusersSpec("DDPM", "ddpm", lambda: d.DDPMScheduler(**s, clip_sample=False), True),
            DiffusersSpec("EulerAncestralDiscrete", "euler_ancestral",
                          lambda: d.EulerAncestralDiscreteScheduler(**s), True),
            DiffusersSpec("KDPM2AncestralDiscrete", "dpm_2_ancestral",
                          lambda: d.KDPM2AncestralDiscreteScheduler(**s), True),
            DiffusersSpec("DPMSolverMultistep (sde-dpmsolver++)", "dpmpp_2m_sde",
                          lambda: d.DPMSolverMultistepScheduler(**s, algorithm_type="sde-dpmsolver++"), True),
            DiffusersSpec("DPMSolverSDE", "dpmpp_sde", lambda: d.DPMSolverSDEScheduler(**s), True)]


_TEMPLATES: dict = {}


def fresh_scheduler(spec, steps: int):
    """A new scheduler of ``spec`` set to ``steps``: a copy of one built once (some constructors
    take ~0.5 s: KDPM2 inverts 1000 sigmas one by one)."""
    if spec.label not in _TEMPLATES:
        _TEMPLATES[spec.label] = spec.make()
    scheduler = copy.deepcopy(_TEMPLATES[spec.label])
    scheduler.set_timesteps(steps)
    return scheduler


def diffusers_scheduler_for(spec, nfe):
    """The scheduler with the most steps whose loop makes at most ``nfe`` model calls."""
    for steps in range(nfe, 0, -1):
        scheduler = fresh_scheduler(spec, steps)
        if len(scheduler.timesteps) <= nfe:
            return scheduler, steps
    return None, 0


@contextlib.contextmanager
def diffusers_noise(scheduler, draw, like):
    """Route a diffusers scheduler's fresh noise through ``draw``."""
    module = sys.modules[type(scheduler).__module__]
    if hasattr(scheduler, "noise_sampler"):
        brownian = BrownianIncrements(draw)
        brownian.like = like
        scheduler.noise_sampler = brownian
    patch = mock.patch.object(module, "randn_tensor", draw) if hasattr(module, "randn_tensor") else None
    with patch or contextlib.nullcontext():
        yield


def run_diffusers(setting, data, spec, nfe, z, draw=monte_carlo_noise):
    scheduler, steps = diffusers_scheduler_for(spec, nfe)
    if scheduler is None:
        return None, 0
    model = Counted(setting.model(data))
    x = z * float(getattr(scheduler, "init_noise_sigma", 1.0))
    with torch.no_grad(), diffusers_noise(scheduler, draw, z):
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
            x = scheduler.step(model(model_input, t.expand(len(x))), t, x).prev_sample
    return x, model.calls


# ----- the sweep --------------------------------------------------------------------------------------
def evaluate(run, data, z_path, z_mc, reference_x0, stochastic: bool, nfe: int) -> list[dict]:
    """``run(z, noise) -> (x0, nfe)``; returns the metric records of one (method, NFE)."""
    if not stochastic:
        out, calls = run(z_path, None)
        metric, error = "ode", None if out is None else float(((out.double() - reference_x0) ** 2).mean().sqrt())
    elif len(data.weights) == 1:
        basis = BasisNoise(rows=2 + 2 * nfe + 4)
        out, calls = run(basis.inputs(), basis)
        metric, error = "w2", None if out is None else gaussian_w2(*basis.moments(out), data)
    else:
        torch.manual_seed(0)
        out, calls = run(z_mc, monte_carlo_noise)
        metric, error = "w2", None if out is None else gaussian_w2(out.double().mean(0), out.double().std(0), data)
    records = [] if error is None else [(metric, error, calls)]
    return [{"metric": m, "error": e, "nfe": c, "target_nfe": nfe} for m, e, c in records]


def sweep(quick: bool, log=print) -> list[dict]:
    nfes = QUICK_NFES if quick else NFES
    datasets = {"gauss": GAUSS} if quick else {"gauss": GAUSS, "mixture": MIXTURE}
    settings = ("vp", "flow") if quick else ("ve", "vp", "flow")
    generator = torch.Generator().manual_seed(0)
    z_path = torch.randn(256 if quick else 512, DIM, generator=generator)
    z_mc = torch.randn(4096, DIM, generator=generator)
    results = []
    for setting_name in settings:
        setting = SETTINGS[setting_name]
        for data_name, data in datasets.items():
            started = time.perf_counter()
            reference_x0 = reference(data, setting, z_path)
            base = {"setting": setting_name, "data": data_name}
            for sampler in SAMPLERS:
                stochastic = SAMPLER_INFO[sampler].stochastic
                for spacing in setting.spacings:
                    for nfe in nfes:
                        run = lambda z, noise: run_difflab(setting, data, sampler, spacing, nfe, z, noise)
                        for record in evaluate(run, data, z_path, z_mc, reference_x0, stochastic, nfe):
                            results.append({**base, "library": "difflab", "method": sampler, "spacing": spacing,
                                            **record})
            for spec in diffusers_specs(setting_name):
                for nfe in nfes:
                    run = lambda z, noise: run_diffusers(setting, data, spec, nfe, z,
                                                         monte_carlo_noise if noise is None else noise)
                    for record in evaluate(run, data, z_path, z_mc, reference_x0, spec.stochastic, nfe):
                        results.append({**base, "library": "diffusers", "method": spec.label, "sampler": spec.sampler,
                                        "spacing": "default", **record})
            log(f"  {setting_name}/{data_name}: {time.perf_counter() - started:.1f} s")
    return results


def monte_carlo_floor(data, n: int = 4096) -> float:
    """The w2 statistic of n exact samples of the data: Monte Carlo error alone."""
    samples = data.sample(n, generator=torch.Generator().manual_seed(1))
    return gaussian_w2(samples.mean(0), samples.std(0), data)


# ----- overhead -----------------------------------------------------------------------------------
def _best_times(fns, repeats: int) -> list[float]:
    """Best-of-``repeats`` wall time of each function, interleaved so that load from other
    processes on a shared machine hits all of them alike."""
    best = [math.inf] * len(fns)
    for _ in range(repeats + 1):  # the first round warms up
        for k, fn in enumerate(fns):
            started = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - started)
    return best


def overhead(quick: bool) -> list[dict]:
    """Seconds per model evaluation of whole sampling loops with a trivial model on a [1, 4] tensor."""
    steps, repeats = (20, 3) if quick else (50, 7)
    schedule = SETTINGS["vp"].schedule
    z = torch.randn(1, 4)
    trivial_model = lambda x_t, t: 0.1 * x_t
    trivial_denoiser = lambda x, sigma: 0.5 * x
    rows = []
    for spec in diffusers_specs("vp"):
        scheduler = fresh_scheduler(spec, steps)  # built once, as a pipeline does; set_timesteps is timed
        evals_theirs = len(scheduler.timesteps)
        spec_model = lambda: run_overhead_diffusers(scheduler, steps, trivial_model, z)
        evals_ours = SAMPLER_INFO[spec.sampler].evals(steps)
        ours = lambda: difflab.sample(trivial_model, schedule, "epsilon", spec.sampler, steps, noise=z,
                                      spacing="trailing")
        sigmas = schedule.sigmas(steps, "trailing")
        alone = lambda: SAMPLERS[spec.sampler](trivial_denoiser, z * float(sigmas[0]), sigmas)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchsde's float-rounding notices (DPMSolverSDE)
            theirs_s, ours_s, alone_s = _best_times([spec_model, ours, alone], repeats)
        theirs_s, ours_s, alone_s = theirs_s / evals_theirs, ours_s / evals_ours, alone_s / evals_ours
        rows.append({"sampler": spec.sampler, "diffusers": spec.label, "steps": steps, "difflab_us": 1e6 * ours_s,
                     "difflab_sampler_alone_us": 1e6 * alone_s, "diffusers_us": 1e6 * theirs_s,
                     "ratio": ours_s / theirs_s})
    return rows


def run_overhead_diffusers(scheduler, steps, model, z):
    scheduler.set_timesteps(steps)
    x = z * float(getattr(scheduler, "init_noise_sigma", 1.0))
    for t in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample
    return x


def main(quick: bool = False, out: str | Path | None = None, log=print) -> dict:
    torch.set_num_threads(1)
    out = Path(out) if out is not None else Path("outputs") / "bench"  # the tracked results: out=benchmarks/results
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    import diffusers

    meta = {"command": "difflab bench samplers" + (" --quick" if quick else ""), "quick": quick,
            "torch": torch.__version__, "diffusers": diffusers.__version__, "difflab": difflab.__version__,
            "threads": 1, "machine": machine(), "date": datetime.date.today().isoformat(),
            "monte_carlo_floor": monte_carlo_floor(MIXTURE)}
    log("accuracy sweep ...")
    results = sweep(quick, log)
    log("overhead ...")
    overhead_rows = overhead(quick)
    meta["seconds"] = round(time.perf_counter() - started, 1)
    report = (f"`{meta['command']}` on {meta['machine']}, {meta['date']}, torch {meta['torch']}, diffusers "
              f"{meta['diffusers']}, {meta['seconds']} s.\n\n" + markdown(results, overhead_rows, meta, SETTINGS, diffusers_specs))
    (out / "samplers.md").write_text(report)
    (out / "samplers.json").write_text(json.dumps({"meta": meta, "results": compact(results),
                                                   "overhead": overhead_rows}) + "\n")
    plot(results, out / "samplers.png", SETTINGS, diffusers_specs)
    log(report)
    log(f"wrote {out / 'samplers.md'}, {out / 'samplers.json'}, {out / 'samplers.png'} in {meta['seconds']} s")
    return {"meta": meta, "results": results, "overhead": overhead_rows}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer NFEs, Gaussian data only (under a minute)")
    parser.add_argument("--out", default=None, help="folder for samplers.{md,json,png} (default outputs/bench; "
                                                    "the tracked results: --out benchmarks/results)")
    args = parser.parse_args()
    main(args.quick, args.out)
