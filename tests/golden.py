"""Fixed recipes whose outputs must not change when difflab's internals are reorganised.

``python tests/golden.py`` prints the hashes as JSON; ``tests/data/golden.json`` holds the hashes
recorded at the commit named in it (before the issue-11 refactor), and
``tests/test_golden.py`` compares. Everything runs at one thread: a different thread count alone
flips a few pixels by one level. Only the public API is used, so the same script ran on the old
tree.

The hashes are exact on the CPU they were recorded on (an AMD Zen3, AVX2). Another CPU's kernels
round differently (AVX-512 on an Intel Xeon flips one pixel value by one level in two of the
pipeline's images, and the trained weights in the fifth decimal), so ``--record`` also keeps what a
tolerance can compare: the images as PNGs and two projections of each trained tensor
(``tests/data/golden/``). They were recorded with ``ATEN_CPU_CAPABILITY=avx2``, which reproduces
the recorded hashes for every image but ``outpaint_heun``.
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


IMAGES: dict[str, np.ndarray] = {}    # every image hashed in this process, by "case-i", for --record


def image_hashes(images, case: str = "") -> list[str]:
    for i, image in enumerate(images):
        IMAGES[f"{case}-{i}"] = np.asarray(image).copy()
    return [_digest(np.asarray(image).tobytes() + repr(image.size).encode()) for image in images]


def tensor_stats(state: dict) -> dict[str, list[float]]:
    """Two numbers per tensor that move with any change beyond rounding: its norm and its projection on a
    fixed Gaussian direction (float64)."""
    out = {}
    for name in sorted(state):
        x = state[name].double().flatten()
        direction = torch.randn(x.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        out[name] = [float(x.norm()), float(x @ direction)]
    return out


def pipeline_cases() -> dict[str, list[str]]:
    import difflab

    pipe = difflab.Pipeline.from_pretrained("shapes-v1")   # the first bundled model, pinned by name
    out = {}
    base = pipe("a red circle above a blue square", num_images=2, seed=0)
    out["txt2img_default"] = image_hashes(base.images, "txt2img_default")
    out["euler_a_negative"] = image_hashes(pipe("two green triangles", negative_prompt="a blue square", seed=5,
                                                steps=8, sampler="euler_ancestral").images, "euler_a_negative")
    out["dpmpp_2m_sde_rescale"] = image_hashes(pipe("a yellow cross", seed=3, steps=6, sampler="dpmpp_2m_sde",
                                                    guidance_scale=4.0, guidance_rescale=0.5).images, "dpmpp_2m_sde_rescale")
    source = base.images[0]
    out["img2img_unipc"] = image_hashes(pipe("a green triangle", image=source, strength=0.6, seed=1, steps=10,
                                             sampler="unipc").images, "img2img_unipc")
    mask = Image.new("L", source.size, 0)
    mask.paste(255, (0, 0, source.size[0] // 2, source.size[1]))
    out["inpaint_ddim"] = image_hashes(pipe("a purple square", image=source, mask=mask, mask_blur=2, seed=2,
                                            steps=10, sampler="ddim").images, "inpaint_ddim")
    out["outpaint_heun"] = image_hashes(pipe("a red circle", image=source, outpaint=(8, 0, 0, 0), seed=4, steps=5,
                                             sampler="heun").images, "outpaint_heun")
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


WEIGHTS: dict[str, dict] = {}          # tensor_stats of each training case's weights, for --record


def training_case(overrides: dict, case: str = "training") -> dict:
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
    WEIGHTS[case] = tensor_stats(state)
    return {"weights": digest.hexdigest()[:20], "images": image_hashes(images, case)}


def all_cases() -> dict:
    torch.set_num_threads(1)
    return {"pipeline": pipeline_cases(), "sample": sample_cases(), "training": training_case({}),
            "training_digits": training_case({"dataset": "digits"}, "training_digits"),
            "training_flow": training_case({"prediction_type": "flow", "schedule": "flow",
                                            "loss_weighting": "min_snr"}, "training_flow")}


def write_outputs(folder: Path) -> None:
    """The images as PNGs and the weights' statistics as JSON, in ``folder``."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for name, array in IMAGES.items():
        Image.fromarray(array).save(folder / "images" / f"{name}.png")
    (folder / "weights.json").write_text(json.dumps(WEIGHTS, indent=0, sort_keys=True))


if __name__ == "__main__":
    # python tests/golden.py [--out DIR]: hashes on stdout; with --out, also the images and weight statistics
    # (--out tests/data/golden records the references the test compares with a tolerance)
    cases = all_cases()
    if "--out" in sys.argv:
        write_outputs(Path(sys.argv[sys.argv.index("--out") + 1]))
    json.dump(cases, sys.stdout, indent=1, sort_keys=True)
