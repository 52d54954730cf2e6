"""A diffusers ``scheduler/scheduler_config.json`` as difflab's schedule, parameterization, sampler
and spacing: the same forward process and grid, so images match diffusers' on the same noise.

Honoured: ``beta_schedule`` (linear, scaled_linear, squaredcos_cap_v2), ``beta_start``/``beta_end``,
``num_train_timesteps``, ``prediction_type``, ``timestep_spacing``, ``steps_offset``,
``rescale_betas_zero_snr``, ``use_karras_sigmas``/``use_exponential_sigmas`` (spacing karras /
exponential) and flow's ``shift``. The scheduler class picks the default sampler (Euler -> euler,
DDIM -> ddim, DPMSolverMultistep -> dpmpp_2m, ...); any difflab sampler can be used instead.
A setting that would change the result and that difflab does not reproduce (trained betas,
thresholding, FLUX's resolution-dependent shift) is refused with one line naming it.
"""

from __future__ import annotations

from difflab.schedules import NoiseSchedule

BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
SAMPLERS = {
    "DDIMScheduler": "ddim", "DDPMScheduler": "ddpm", "PNDMScheduler": "plms", "LMSDiscreteScheduler": "lms",
    "EulerDiscreteScheduler": "euler", "EulerAncestralDiscreteScheduler": "euler_ancestral",
    "HeunDiscreteScheduler": "heun", "KDPM2DiscreteScheduler": "dpm_2", "KDPM2AncestralDiscreteScheduler": "dpm_2_ancestral",
    "DPMSolverMultistepScheduler": "dpmpp_2m", "DPMSolverSinglestepScheduler": "dpmpp_2m", "DPMSolverSDEScheduler": "dpmpp_sde",
    "UniPCMultistepScheduler": "unipc", "DEISMultistepScheduler": "deis", "LCMScheduler": "lcm",
    "FlowMatchEulerDiscreteScheduler": "euler",
}
REFUSED_IF_SET = ("trained_betas", "thresholding", "use_dynamic_shifting", "use_beta_sigmas", "shift_terminal",
                  "use_flow_sigmas", "invert_sigmas", "stochastic_sampling")


def from_scheduler_config(config: dict, where: str = "scheduler_config.json") -> dict:
    """``{"schedule": NoiseSchedule, "prediction_type", "sampler", "spacing"}`` of a scheduler config."""
    if not isinstance(config, dict):
        raise ValueError(f"{where} must be a JSON object")
    name = config.get("_class_name", "")
    if name not in SAMPLERS:
        raise ValueError(f"{where}: scheduler {name!r} is not one difflab reproduces; known: {', '.join(SAMPLERS)}")
    for key in REFUSED_IF_SET:
        if config.get(key):
            raise ValueError(f"{where}: {key}={config[key]!r} is not supported by difflab (it changes the result)")
    if name.startswith("FlowMatch"):
        schedule = NoiseSchedule.flow(shift=float(config.get("shift", 1.0)),
                                      num_train_timesteps=int(config.get("num_train_timesteps", 1000)))
        return {"schedule": schedule, "prediction_type": "flow", "sampler": SAMPLERS[name], "spacing": "linspace"}
    beta_schedule = config.get("beta_schedule", "linear")
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"{where}: beta_schedule {beta_schedule!r} is not supported; use one of {', '.join(BETA_SCHEDULES)}")
    kind = BETA_SCHEDULES[beta_schedule]
    args = {"num_train_timesteps": int(config.get("num_train_timesteps", 1000)),
            "rescale_zero_terminal_snr": bool(config.get("rescale_betas_zero_snr", False))}
    if kind != "cosine":
        args.update(beta_start=float(config.get("beta_start", 0.0001)), beta_end=float(config.get("beta_end", 0.02)))
    schedule = NoiseSchedule(kind, steps_offset=int(config.get("steps_offset", 0)), **args)
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"{where}: prediction_type {prediction_type!r} is not supported")
    spacing = config.get("timestep_spacing", "linspace" if name in ("EulerDiscreteScheduler", "LMSDiscreteScheduler")
                         else "leading")
    if config.get("use_karras_sigmas"):
        spacing = "karras"
    elif config.get("use_exponential_sigmas"):
        spacing = "exponential"
    if spacing not in ("leading", "trailing", "linspace", "karras", "exponential"):
        raise ValueError(f"{where}: timestep_spacing {spacing!r} is not supported")
    return {"schedule": schedule, "prediction_type": prediction_type, "sampler": SAMPLERS[name], "spacing": spacing}
