"""difflab against diffusers' scheduler loops, with the exact Gaussian-mixture model as the network.

diffusers runs its own loop (``set_timesteps``, ``scale_model_input``, model, ``step``) on
``NativeModel`` (native x_t and diffusers' timestep in, prediction out); difflab runs the sampler
of the same algorithm on the same grid from the same start. Starts follow diffusers'
``init_noise_sigma``: VE x = z * init_noise_sigma for the k-diffusion-style schedulers (Euler,
Heun, LMS, KDPM2), native x_T = z (VE x = z / alpha) for DDIM, PNDM, DPM-Solver, UniPC, DEIS and
flow, which is ``difflab.sample``'s start. Final samples agree within 1e-4 in float32.

diffusers conventions that differ from difflab's without being bugs are compared like-for-like and
named where they occur; diffusers bugs are tested as such (difflab does not copy them).
"""

import math

import diffusers
import pytest
import torch

import difflab
from difflab import Denoiser
from difflab.samplers import SAMPLERS
from difflab.testing.gaussian import GaussianMixture, NativeModel

MIXTURE = GaussianMixture([0.2, 0.5, 0.3], [[-1.5, 0.5, 2.0, 0.0], [1.0, -0.5, 0.0, 1.0], [0.0, 2.0, -1.0, -2.0]],
                          [[0.04, 0.3, 0.1, 1.0], [0.25, 0.05, 0.5, 0.2], [0.5, 0.1, 0.02, 0.3]])
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)  # diffusers' name for it
SCHEDULE = difflab.NoiseSchedule.scaled_linear()
BATCH, TOL = 16, 1e-4
Z = torch.randn(BATCH, 4, generator=torch.Generator().manual_seed(0))
# diffusers' schedulers hand tensors to NumPy in ways NumPy 2 deprecates: not ours to fix.
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers"),
              pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")]


def diffusers_loop(scheduler, model, x, steps, trajectory=None, generator=None):
    """diffusers' denoising loop; ``trajectory`` collects the sample entering each step."""
    scheduler.set_timesteps(steps)
    step_kwargs = {"generator": generator} if generator is not None else {}
    for t in scheduler.timesteps:
        if trajectory is not None:
            trajectory.append(x)
        model_input = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        x = scheduler.step(model(model_input, t.expand(len(x))), t, x, **step_kwargs).prev_sample
    return x


def scheduler_sigmas(scheduler, timesteps=None) -> torch.Tensor:
    """The VE grid of a discrete VP scheduler: sqrt((1 - alpha_bar) / alpha_bar) at its timesteps, then 0."""
    alphas_cumprod = scheduler.alphas_cumprod.double()[scheduler.timesteps if timesteps is None else timesteps]
    return torch.cat([((1 - alphas_cumprod) / alphas_cumprod).sqrt(), torch.zeros(1, dtype=torch.float64)])


def run_difflab(sampler, sigmas, x, prediction_type="epsilon", schedule=SCHEDULE, mixture=MIXTURE, **options):
    return SAMPLERS[sampler](Denoiser(NativeModel(mixture, schedule, prediction_type), schedule, prediction_type),
                             x, sigmas, **options)


def vp_start(sigmas) -> torch.Tensor:
    """Native x_T = z in VE coordinates: z / alpha(sigma_0) = z * sqrt(1 + sigma_0^2)."""
    return Z * math.sqrt(1 + float(sigmas[0]) ** 2)


def seeded_noise(seed):
    """difflab's noise callback drawing what diffusers draws: one ``randn`` per step, in order."""
    generator = torch.Generator().manual_seed(seed)
    return lambda like, step, sub=0: torch.randn(like.shape, generator=generator, dtype=like.dtype)


# ----- DDIM, PNDM and DDPM: native x_T = z, integer timesteps ----------------------------------------
@pytest.mark.parametrize("steps", [5, 10, 20, 50])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim(spacing, steps):
    scheduler = diffusers.DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=True, timestep_spacing=spacing)
    model = NativeModel(MIXTURE, SCHEDULE, "epsilon")
    theirs = diffusers_loop(scheduler, model, Z, steps)
    torch.testing.assert_close(scheduler_sigmas(scheduler), SCHEDULE.sigmas(steps, spacing), rtol=1e-4, atol=0)
    ours = difflab.sample(model, SCHEDULE, "epsilon", "ddim", steps, noise=Z, spacing=spacing)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOL)


def test_ddim_v_prediction_with_steps_offset():
    """Stable Diffusion 2's configuration: 'leading' with steps_offset = 1, v-prediction."""
    scheduler = diffusers.DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=True, steps_offset=1,
                                        prediction_type="v_prediction")
    theirs = diffusers_loop(scheduler, NativeModel(MIXTURE, SCHEDULE, "v_prediction"), Z, 25)
    sigmas = SCHEDULE.sigmas(25, "leading", steps_offset=1)
    torch.testing.assert_close(scheduler_sigmas(scheduler), sigmas, rtol=1e-4, atol=0)
    torch.testing.assert_close(run_difflab("ddim", sigmas, vp_start(sigmas), "v_prediction"), theirs, rtol=0, atol=TOL)


def test_ddim_without_alpha_one_stops_at_the_first_training_level():
    """set_alpha_to_one=False (Stable Diffusion 1's config): the last DDIM step goes from t = 0 to
    alpha_bar[0], i.e. it stays at sigma(0) ~ 0.03 and the output keeps that noise. Not a bug but a
    convention: it equals difflab's state entering the final step (at sigma(0)) of the same grid."""
    scheduler = diffusers.DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=False)
    theirs = diffusers_loop(scheduler, NativeModel(MIXTURE, SCHEDULE, "epsilon"), Z, 10)
    sigmas = SCHEDULE.sigmas(10, "leading")
    states = []
    run_difflab("ddim", sigmas, vp_start(sigmas), callback=lambda d: states.append((d["x"], d["sigma"])))
    x, sigma = states[-1]
    assert sigma == pytest.approx(float(SCHEDULE.sigma(0)))
    torch.testing.assert_close(x / math.sqrt(1 + sigma**2), theirs, rtol=0, atol=TOL)  # native x at t = 0


def landed_timesteps(alphas_cumprod, states):
    """The training step each DDIM step landed on, read from the samples themselves: with the
    point-mass model eps = x_t / sigma_t (data = {0}), a step scales x by sqrt(1 - a_to) / sqrt(1 - a_from)."""
    landed = []
    for t, before, after in states:
        a_from = float(alphas_cumprod[t])
        a_to = 1 - (float(after.norm() / before.norm())) ** 2 * (1 - a_from)
        landed.append(int(torch.argmin((alphas_cumprod.double() - a_to).abs())) if a_to < 0.9999 else -1)
    return landed


def test_ddim_trailing_with_steps_not_dividing_T_is_a_diffusers_bug():
    """diffusers' DDIM steps from t to t - T // n, not to the next timestep of its own grid: with
    'trailing' and n = 7 the grid is 999, 856, 713, ... but the steps land on 857, 714, ... and the
    last one on t = 0 (alpha_bar[0] < 1), so the output keeps noise of std sigma_t(0) ~ 0.03 and the
    model is asked for timestep 856 about a sample at 857. difflab steps exactly along the grid.
    (PNDM's step has the same t - T // n rule, visible with 'linspace'.)"""
    steps = 7
    scheduler = diffusers.DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    grid = scheduler.timesteps.tolist()
    sigmas = SCHEDULE.sigmas(steps, "trailing")
    assert grid == SCHEDULE.timesteps(sigmas).round().long().tolist() == [999, 856, 713, 570, 428, 285, 142]

    alphas_cumprod = scheduler.alphas_cumprod
    point_mass = lambda x_t, t: x_t / (1 - alphas_cumprod[t.long()]).sqrt()[:, None]
    x, states = Z, []
    for t in scheduler.timesteps:
        x_next = scheduler.step(point_mass(x, t.expand(BATCH)), t, x).prev_sample
        states.append((int(t), x, x_next))
        x = x_next
    theirs = landed_timesteps(alphas_cumprod, states)
    assert theirs == [857, 714, 571, 428, 286, 143, 0]      # t - 142: off the grid, and not to sigma = 0
    assert theirs[:-1] != grid[1:]
    assert x.norm() > 0.01 * Z.norm()                        # residual noise: the data is exactly 0

    visited = []
    den = lambda x, sigma: torch.zeros_like(x)              # the same point mass at 0, as a VE denoiser
    ours = SAMPLERS["ddim"](den, vp_start(sigmas), sigmas, callback=lambda d: visited.append((d["x"], d["sigma"])))
    ratios = [float(b.norm() / a.norm()) for (a, _), (b, _) in zip(visited, visited[1:])]
    landed_sigmas = [s * r for (_, s), r in zip(visited, ratios)]  # VE: x = sigma * eps
    assert SCHEDULE.t(torch.tensor(landed_sigmas)).round().long().tolist() == grid[1:]
    assert ours.abs().max() == 0                             # ends at sigma = 0: exactly the data


@pytest.mark.parametrize("steps", [10, 20, 50])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_pndm_plms(spacing, steps):
    """PNDM with skip_prk_steps: a pseudo improved-Euler start, then Adams-Bashforth on eps."""
    scheduler = diffusers.PNDMScheduler(**SD, skip_prk_steps=True, set_alpha_to_one=True, timestep_spacing=spacing)
    model = NativeModel(MIXTURE, SCHEDULE, "epsilon")
    theirs = diffusers_loop(scheduler, model, Z, steps)
    assert len(scheduler.timesteps) == steps + 1                # PLMS's start costs one extra evaluation
    grid = scheduler_sigmas(scheduler, scheduler.timesteps.unique().flip(0))  # its start repeats a timestep
    torch.testing.assert_close(grid, SCHEDULE.sigmas(steps, spacing), rtol=1e-4, atol=0)
    ours = difflab.sample(model, SCHEDULE, "epsilon", "plms", steps, noise=Z, spacing=spacing)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOL)


@pytest.mark.parametrize("steps", [10, 50])
def test_ddpm_with_the_same_noise(steps):
    """DDPM's posterior step (variance beta-tilde) is difflab's ddpm; both draw one randn per step."""
    scheduler = diffusers.DDPMScheduler(**SD, clip_sample=False)
    theirs = diffusers_loop(scheduler, NativeModel(MIXTURE, SCHEDULE, "epsilon"), Z, steps,
                            generator=torch.Generator().manual_seed(5))
    sigmas = SCHEDULE.sigmas(steps, "leading")
    torch.testing.assert_close(scheduler_sigmas(scheduler), sigmas, rtol=1e-4, atol=0)
    ours = run_difflab("ddpm", sigmas, vp_start(sigmas), noise=seeded_noise(5))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOL)


def test_zero_terminal_snr_ddim():
    """Lin et al. (2023): rescaled betas, v-prediction, 'trailing', starting from pure noise at t = 999."""
    schedule = difflab.NoiseSchedule.scaled_linear(rescale_zero_terminal_snr=True)
    model = NativeModel(MIXTURE, schedule, "v_prediction")
    for steps in (4, 10, 25):
        scheduler = diffusers.DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=True, rescale_betas_zero_snr=True,
                                            timestep_spacing="trailing", prediction_type="v_prediction")
        theirs = diffusers_loop(scheduler, model, Z, steps)
        assert scheduler.alphas_cumprod[-1] == 0
        sigmas = schedule.sigmas(steps, "trailing")
        assert math.isinf(sigmas[0])
        torch.testing.assert_close(scheduler_sigmas(scheduler)[1:], sigmas[1:], rtol=1e-4, atol=0)
        ours = difflab.sample(model, schedule, "v_prediction", "ddim", steps, noise=Z, spacing="trailing")
        torch.testing.assert_close(ours, theirs, rtol=0, atol=TOL)


# ----- k-diffusion-style discrete schedulers: VE x = z * init_noise_sigma -------------------------
# Their 'linspace' timesteps are fractional; diffusers interpolates sigma linearly in t there,
# difflab log-sigma linearly (as k-diffusion's DiscreteSchedule does). Between adjacent training
# steps the two differ by ~1e-6 relatively, far below the tolerance, so n = 7 is compared as is.
# Their init_noise_sigma is sigma_max for 'linspace'/'trailing' but sqrt(sigma_max^2 + 1) for
# 'leading' (native x_T = 0.998 z resp. z): passed to both as diffusers has it.
KARRAS_STYLE = {
    "euler": (diffusers.EulerDiscreteScheduler, {}),
    "heun": (diffusers.HeunDiscreteScheduler, {}),
    "lms": (diffusers.LMSDiscreteScheduler, {}),
    "dpm_2": (diffusers.KDPM2DiscreteScheduler, {}),
}


def unique_sigmas(scheduler) -> torch.Tensor:
    """Heun / KDPM2 list each level twice (two stages): the step grid without repeats or midpoints."""
    sigmas = scheduler.sigmas.double()
    if isinstance(scheduler, diffusers.HeunDiscreteScheduler):
        return torch.cat([sigmas[:1], sigmas[1::2]])
    return sigmas


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [7, 10])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("name", list(KARRAS_STYLE))
def test_karras_style_schedulers(name, spacing, steps, prediction_type):
    cls, config = KARRAS_STYLE[name]
    scheduler = cls(**SD, **config, timestep_spacing=spacing, prediction_type=prediction_type)
    scheduler.set_timesteps(steps)
    x = Z * scheduler.init_noise_sigma
    theirs = diffusers_loop(scheduler, NativeModel(MIXTURE, SCHEDULE, prediction_type), x, steps)
    sigmas = SCHEDULE.sigmas(steps, spacing)
    if name != "dpm_2":  # KDPM2's sigmas interleave its log-midpoints
        torch.testing.assert_close(unique_sigmas(scheduler), sigmas, rtol=1e-4, atol=0)
    ours = run_difflab(name, sigmas, x, prediction_type)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOL)


@pytest.mark.parametrize("steps", [7, 10])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_euler_ancestral_with_the_same_noise(spacing, steps):
    scheduler = diffusers.EulerAncestralDiscreteScheduler(**SD, timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    x = Z * scheduler.init_noise_sigma
    theirs = diffusers_loop(scheduler, NativeModel(MIXTURE, SCHEDULE, "epsilon"), x, steps,
                            generator=torch.Generator().manual_seed(5))
    ours = run_difflab("euler_ancestral", SCHEDULE.sigmas(steps, spacing), x, noise=seeded_noise(5))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOL)


# ----- multistep solvers: native x_T = z ------------------------------------------------------------
# DPMSolverMultistep / UniPC / DEIS build 'linspace' and 'leading' from n + 1 points and drop the
# last (t = 0): linspace(0, 999, n + 1).round()[:-1], and a leading stride of T // (n + 1). That is
# not difflab's (nor DDIM's / Euler's) 'linspace' / 'leading', so there difflab runs on the
# scheduler's own grid; 'trailing' is the same rule in both.
MULTISTEP = {
    "dpmpp_2m": (diffusers.DPMSolverMultistepScheduler,
                 dict(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint"), "dpmpp_2m"),
    "unipc_bh2": (diffusers.UniPCMultistepScheduler, {}, "unipc"),  # its defaults: bh2, order 2
}


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [5, 10, 20])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("name", list(MULTISTEP))
def test_multistep_solvers(name, spacing, steps, prediction_type):
    cls, config, sampler = MULTISTEP[name]
    scheduler = cls(**SD, **config, timestep_spacing=spacing, prediction_type=prediction_type)
    model = NativeModel(MIXTURE, SCHEDULE, prediction_type)
    theirs = diffusers_loop(scheduler, model, Z, steps)
    sigmas = scheduler_sigmas(scheduler)
    torch.testing.assert_close(scheduler.sigmas.double(), sigmas, rtol=1e-4, atol=0)
    if spacing == "trailing":
        torch.testing.assert_close(sigmas, SCHEDULE.sigmas(steps, "trailing"), rtol=1e-4, atol=0)
    else:
        assert not torch.allclose(sigmas, SCHEDULE.sigmas(steps, spacing), rtol=1e-3)
    ours = run_difflab(sampler, sigmas, vp_start(sigmas), prediction_type)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOL)


def test_unipc_bh1_trajectory():
    """UniPC with B(h) = h. diffusers bug: with its default final_sigmas_type='zero' the last step
    has h = inf, so B(h) = -inf multiplies an empty (0) correction: the output is NaN. The samples
    entering every step (all the predictor-corrector work) are compared instead, and difflab's final
    sample is the model's x0 at the last of them, as in the bh2 variant."""
    steps, spacing = 10, "trailing"
    scheduler = diffusers.UniPCMultistepScheduler(**SD, solver_type="bh1", timestep_spacing=spacing)
    model = NativeModel(MIXTURE, SCHEDULE, "epsilon")
    trajectory = []
    theirs = diffusers_loop(scheduler, model, Z, steps, trajectory)
    assert torch.isnan(theirs).all()                     # the upstream bug; difflab's result is finite
    sigmas = SCHEDULE.sigmas(steps, spacing)
    states = []
    ours = run_difflab("unipc", sigmas, vp_start(sigmas), variant="bh1",
                       callback=lambda d: states.append((d["x"] / math.sqrt(1 + d["sigma"] ** 2), d["denoised"])))
    assert len(states) == len(trajectory) == steps
    for (x_native, _), x_theirs in zip(states, trajectory):
        torch.testing.assert_close(x_native, x_theirs, rtol=0, atol=TOL)
    torch.testing.assert_close(ours, states[-1][1], rtol=0, atol=0)
    unipc_bh2 = run_difflab("unipc", sigmas, vp_start(sigmas))
    assert 0 < (ours - unipc_bh2).abs().max() < 0.1      # a different, equally converged, update rule


@pytest.mark.parametrize("order", [2, 3])
def test_deis(order):
    """DEISMultistepScheduler (log-rho). Its grid ends at sigma(t = 0) ~ 0.03 rather than 0 (no
    final_sigmas_type), so difflab runs the grid plus that level and the samples entering every step
    are compared, the last at sigma(0). n = 20: diffusers lowers the final orders only below 15 steps,
    and so does difflab. Note diffusers' default is solver_order=2; difflab's deis defaults to 3."""
    steps = 20
    scheduler = diffusers.DEISMultistepScheduler(**SD, solver_order=order, timestep_spacing="trailing")
    trajectory = []
    theirs = diffusers_loop(scheduler, NativeModel(MIXTURE, SCHEDULE, "epsilon"), Z, steps, trajectory)
    last = float(SCHEDULE.sigma(0))
    assert scheduler.sigmas[-1].item() == pytest.approx(last, rel=1e-4)
    sigmas = torch.cat([SCHEDULE.sigmas(steps, "trailing")[:-1], torch.tensor([last, 0.0], dtype=torch.float64)])
    states = []
    run_difflab("deis", sigmas, vp_start(sigmas), order=order,
                callback=lambda d: states.append(d["x"] / math.sqrt(1 + d["sigma"] ** 2)))
    for x_native, x_theirs in zip(states, trajectory + [theirs]):
        torch.testing.assert_close(x_native, x_theirs, rtol=0, atol=TOL)


# ----- flow matching ----------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [4, 10, 28])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_match_euler(shift, steps):
    """FlowMatchEulerDiscreteScheduler from t = 1 (x = z exactly). Its grid is a linspace between the
    already-shifted training ends, shifted again; difflab's flow 'linspace' reproduces it."""
    schedule = difflab.NoiseSchedule.flow(shift)
    model = NativeModel(MIXTURE, schedule, "flow")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    theirs = diffusers_loop(scheduler, model, Z, steps)
    sigmas = schedule.sigmas(steps)
    flow_t = torch.where(torch.isinf(sigmas), torch.ones_like(sigmas), sigmas / (1 + sigmas))
    torch.testing.assert_close(flow_t, scheduler.sigmas.double(), rtol=1e-6, atol=1e-7)
    ours = difflab.sample(model, schedule, "flow", "euler", steps, noise=Z)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOL)
