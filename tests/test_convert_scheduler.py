"""A diffusers scheduler config becomes difflab's schedule and grid: the same timesteps and sigmas
as diffusers' scheduler classes produce from that config (diffusers as the reference)."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch

from difflab.convert.diffusers_scheduler import from_scheduler_config

SD15 = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000,
        "steps_offset": 1, "prediction_type": "epsilon"}
CASES = [
    ("EulerDiscreteScheduler", {**SD15, "timestep_spacing": "leading"}, "euler"),
    ("EulerDiscreteScheduler", {**SD15, "timestep_spacing": "linspace"}, "euler"),
    ("EulerDiscreteScheduler", {**SD15, "timestep_spacing": "trailing", "prediction_type": "v_prediction"}, "euler"),
    ("EulerDiscreteScheduler", {**SD15, "use_karras_sigmas": True}, "euler"),
    ("DDIMScheduler", {**SD15, "timestep_spacing": "leading", "prediction_type": "v_prediction"}, "ddim"),
    ("DDIMScheduler", {**SD15, "timestep_spacing": "trailing", "rescale_betas_zero_snr": True}, "ddim"),
    ("DDIMScheduler", {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "trailing"}, "ddim"),
]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers
@pytest.mark.parametrize("name,config,sampler", CASES)
@pytest.mark.parametrize("steps", [4, 25])
def test_discrete_grids_equal_diffusers(name, config, sampler, steps):
    reference = getattr(diffusers, name).from_config(config)
    reference.set_timesteps(steps)
    ours = from_scheduler_config({"_class_name": name, **config})
    assert ours["sampler"] == sampler and ours["prediction_type"] == config.get("prediction_type", "epsilon")
    schedule = ours["schedule"]
    sigmas = schedule.sigmas(steps, ours["spacing"])
    if hasattr(reference, "sigmas"):  # the k-diffusion style schedulers keep their sigma grid
        assert torch.allclose(sigmas.float(), reference.sigmas.float(), rtol=1e-4, atol=1e-5)
    else:
        timesteps = schedule.timesteps(sigmas)
        assert np.allclose(timesteps.numpy(), reference.timesteps.numpy(), atol=1e-3)
        alphas = schedule.alphas_cumprod.float()
        assert torch.allclose(alphas, reference.alphas_cumprod.float(), rtol=1e-5, atol=1e-7)


def test_flow_grid_equals_flow_match_euler():
    config = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0, "num_train_timesteps": 1000}
    reference = diffusers.FlowMatchEulerDiscreteScheduler.from_config(config)
    reference.set_timesteps(10)
    ours = from_scheduler_config(config)
    sigmas = ours["schedule"].sigmas(10, ours["spacing"])
    t = torch.where(torch.isinf(sigmas), 1.0, sigmas / (1 + sigmas))  # difflab's VE sigma -> flow time
    assert ours["prediction_type"] == "flow"
    assert torch.allclose(t.float(), reference.sigmas.float(), atol=1e-5)


@pytest.mark.parametrize("config,words", [
    ({"_class_name": "KarrasVeScheduler"}, "not one difflab reproduces"),
    ({"_class_name": "DDIMScheduler", "trained_betas": [0.1, 0.2]}, "trained_betas"),
    ({"_class_name": "DDIMScheduler", "thresholding": True}, "thresholding"),
    ({"_class_name": "DDIMScheduler", "beta_schedule": "sigmoid"}, "beta_schedule 'sigmoid'"),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True}, "use_dynamic_shifting"),
    ({"_class_name": "DDIMScheduler", "prediction_type": "flow"}, "prediction_type 'flow'"),
])
def test_unsupported_settings_are_refused_by_name(config, words):
    with pytest.raises(ValueError, match=words):
        from_scheduler_config(config)
