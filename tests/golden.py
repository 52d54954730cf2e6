"""Fixed recipes whose outputs must not change when difflab's internals are reorganised.

``python tests/golden.py`` prints the hashes as JSON; ``tests/data/golden.json`` holds the hashes
recorded at the commit named in it (before the issue-11 refactor), and
``tests/test_golden.py`` compares. Everything runs at one thread: a different thread count alone
flips a few pixels by one level. Only the public API is used, so the same script ran on the old
tree.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def image_hashes(images) -> list[str]:
    return [_digest(np.asarray(image).tobytes() + repr(image.size).encode()) for image in images]


def pipeline_cases() -> dict[str, list[str]]:
    import difflab

    pipe = difflab.Pipeline.from_pretrained()
    out = {}
    base = pipe("a red circle above a blue square", num_images=2, seed=0)
    out["txt2img_default"] = image_hashes(base.images)
    out["euler_a_negative"] = image_hashes(pipe("two green triangles", negative_prompt="a blue square", seed=5,
                                                steps=8, sampler="euler_ancestral").images)
    out["dpmpp_2m_sde_rescale"] = image_hashes(pipe("a yellow cross", seed=3, steps=6, sampler="dpmpp_2m_sde",
                                                    guidance_scale=4.0, guidance_rescale=0.5).images)
    source = base.images[0]
    out["img2img_unipc"] = image_hashes(pipe("a green triangle", image=source, strength=0.6, seed=1, steps=10,
                                             sampler="unipc").images)
    mask = Image.new("L", source.size, 0)
    mask.paste(255, (0, 0, source.size[0] // 2, source.size[1]))
    out["inpaint_ddim"] = image_hashes(pipe("a purple square", image=source, mask=mask, mask_blur=2, seed=2,
                                            steps=10, sampler="ddim").images)
    out["outpaint_heun"] = image_hashes(pipe("a red circle", image=source, outpaint=(8, 0, 0, 0), seed=4, steps=5,
                                             sampler="heun").images)
    return out


def _closed_form_model(x_t, t, **cond):
    """A fixed smooth function of (x_t, t): exercises every parameterisation without a network."""
    return 0.3 * x_t * torch.cos(t.reshape(-1, *([1] * (x_t.ndim - 1))) / 1000) + 0.1


def sample_cases() -> dict[str, str]:
    import difflab

    schedules = {"vp": difflab.NoiseSchedule.scaled_linear(),
                 "ztsnr": difflab.NoiseSchedule.cosine(rescale_zero_terminal_snr=True),
                 "flow": difflab.NoiseSchedule.flow(shift=3.0)}
    out = {}
    for schedule_name, schedule in schedules.items():
        for prediction in ("epsilon", "v_prediction", "sample", "flow"):
            if prediction == "epsilon" and math.isinf(float(schedule.sigmas(4)[0])):
                continue
            for sampler in ("deis", "dpmpp_2s_ancestral"):
                x = difflab.sample(_closed_form_model, schedule, prediction, sampler, steps=6, shape=(2, 3, 8, 8),
                                   seeds=[0, 1])
                out[f"{schedule_name}_{prediction}_{sampler}"] = _digest(x.numpy().tobytes())
    return out


def training_case(overrides: dict) -> dict:
    """Hash of the exported weights of a short ``tiny`` training run, and of two images it draws."""
    from safetensors.torch import load_file

    import difflab
    from difflab.train import build_config, train

    config = build_config("tiny", None, {"max_steps": 6, "checkpoint_every": 0, **overrides})
    with tempfile.TemporaryDirectory() as tmp:
        model = train(config, Path(tmp) / "run", log=lambda *a: None)
        state = load_file(Path(model) / "model.safetensors")
        prompt = 3 if config.dataset == "digits" else "a red circle"
        images = difflab.Pipeline.from_pretrained(model)(prompt, num_images=2, seed=0, steps=4).images
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode() + state[name].numpy().tobytes())
    return {"weights": digest.hexdigest()[:20], "images": image_hashes(images)}


def all_cases() -> dict:
    torch.set_num_threads(1)
    return {"pipeline": pipeline_cases(), "sample": sample_cases(), "training": training_case({}),
            "training_digits": training_case({"dataset": "digits"}),
            "training_flow": training_case({"prediction_type": "flow", "schedule": "flow",
                                            "loss_weighting": "min_snr"})}


if __name__ == "__main__":
    json.dump(all_cases(), sys.stdout, indent=1, sort_keys=True)
