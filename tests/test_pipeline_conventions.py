"""The conventions people arrive with from diffusers: pipe.to(device, dtype), its argument names,
and --device / --dtype on the command line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import difflab
from difflab.pipelines import read_recipe


@pytest.fixture(scope="module")
def pipe():
    return difflab.Pipeline.from_pretrained()


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def test_to_dtype_casts_the_whole_pipeline_and_back(pipe):
    reference = pipe("a red circle", seed=3, steps=6)
    try:
        wide = pipe.to(dtype=torch.float64)("a red circle", seed=3, steps=6)
        assert next(pipe.model.parameters()).dtype == torch.float64 and pipe.dtype == torch.float64
        assert np.abs(pixels(wide) - pixels(reference)).max() <= 1
    finally:
        pipe.to(dtype=torch.float32)  # float32 -> float64 -> float32 loses nothing
    assert np.array_equal(pixels(pipe("a red circle", seed=3, steps=6)), pixels(reference))


def test_half_precision_runs_the_network_while_the_sampler_stays_float32(pipe):
    reference = pipe("a red circle", seed=3, steps=6)
    half = difflab.Pipeline.from_pretrained().to(dtype="bfloat16")  # a copy: casting down loses bits
    result = half("a red circle", seed=3, steps=6)
    assert next(half.model.parameters()).dtype == torch.bfloat16
    other_seed = pipe("a red circle", seed=4, steps=6)
    # bf16 keeps 8 bits of mantissa: its image stays far closer to float32's than another seed's is
    # (shapes v1.1: 8.2 levels against 124; shapes-v1: 3.9 against 93)
    drift = np.abs(pixels(result) - pixels(reference)).mean()
    assert drift < 0.15 * np.abs(pixels(other_seed) - pixels(reference)).mean() and drift < 16


def test_to_refuses_what_this_machine_lacks(pipe):
    with pytest.raises(ValueError, match="not available on this machine"):
        pipe.to("cuda:7")
    with pytest.raises(ValueError, match="floating-point dtype"):
        pipe.to(dtype=torch.int8)


def test_diffusers_argument_names(pipe):
    ours = pipe("a red circle", steps=5, num_images=2, seed=11)
    generator = torch.Generator().manual_seed(0)
    seed = int(torch.randint(0, 2**31, (1,), generator=torch.Generator().manual_seed(0)))
    theirs = pipe("a red circle", num_inference_steps=5, num_images_per_prompt=2, generator=generator)
    assert [r["seed"] for r in theirs.recipes] == [seed, seed + 1] and theirs.recipes[0]["steps"] == 5
    assert len(ours.images) == len(theirs.images) == 2
    with pytest.raises(ValueError, match="give steps or num_inference_steps, not both"):
        pipe("a red circle", steps=4, num_inference_steps=4)
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        pipe("a red circle", guidance=3)
    latents = torch.randn(1, 3, 32, 32)
    given = pipe("a red circle", steps=4, latents=latents)
    assert given.recipes[0]["latents"] == "given"
    with pytest.raises(ValueError, match="made from given latents"):
        pipe.replay(given.recipes[0])
    with pytest.raises(ValueError, match=r"latents must be a tensor of shape \(1, 3, 32, 32\)"):
        pipe("a red circle", steps=4, latents=torch.randn(1, 4, 32, 32))


def test_pngs_carry_a1111_parameters_and_a1111_sampler_names_get_a_hint(pipe, tmp_path):
    from PIL import Image

    result = pipe("a red circle", negative_prompt="a blue square", seed=4, steps=3, sampler="dpmpp_2m",
                  spacing="karras", guidance_scale=2.5)
    [path] = result.save(tmp_path)
    with Image.open(path) as image:
        parameters = image.info["parameters"].splitlines()
    assert parameters[:2] == ["a red circle", "Negative prompt: a blue square"]
    fields = dict(field.split(": ", 1) for field in parameters[2].split(", "))
    assert fields["Steps"] == "3" and fields["Sampler"] == "DPM++ 2M Karras" and fields["CFG scale"] == "2.5"
    assert fields["Seed"] == "4" and fields["Size"] == "64x64" and fields["Model"] == "shapes-v2.1"
    assert read_recipe(path) == result.recipes[0]  # difflab's JSON recipe stays the source of truth
    with pytest.raises(ValueError, match=r"AUTOMATIC1111's name for sampler 'dpmpp_2m' with spacing 'karras'"):
        pipe("a red circle", sampler="DPM++ 2M Karras")
    with pytest.raises(ValueError, match=r"AUTOMATIC1111's name for sampler 'euler_ancestral'\)"):
        pipe("a red circle", sampler="Euler a")


def test_model_cpu_offload_hooks_every_stage_and_changes_no_pixel(tmp_path):
    """On this CPU-only machine the offload target is the CPU itself: this checks that accelerate's
    hooks wrap the text model, the network and the VAE and that images do not change; what the GPU
    saves is for a machine with one."""
    from test_convert_sd_pipeline import PROMPT, tiny_sd_folder
    folder, _ = tiny_sd_folder(tmp_path)
    pipe = difflab.Pipeline.from_pretrained(folder)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    before = pipe(PROMPT, steps=3, latents=latents)
    pipe.enable_model_cpu_offload("cpu")
    assert all(hasattr(module, "_hf_hook") for module in (pipe.encoder.model, pipe.model, pipe.vae))
    assert pipe.device == torch.device("cpu")
    after = pipe(PROMPT, steps=3, latents=latents)
    assert np.array_equal(pixels(before), pixels(after))
    with pytest.raises(ValueError, match="not available on this machine"):
        pipe.enable_model_cpu_offload("cuda:3")
