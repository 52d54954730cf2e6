"""LoRA files loaded onto difflab's SD UNet through peft: a LoRA that peft makes on diffusers' tiny
random UNet, saved by diffusers (nothing is downloaded), gives diffusers' outputs and images in
difflab; the same weights in kohya's layout load to the same network (and diffusers' own kohya
converter agrees); scales combine, unloading restores the base network exactly, bad files are refused."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

import difflab
from difflab.adapters import loaded_loras
from test_convert_sd_pipeline import PROMPT, tiny_sd_folder

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
# Attention projections and the resamplers' convolutions (3x3 kernels; the upsampler's exact sub-pixel path).
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv"]
WEIGHT_NAME = "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(sd folder, diffusers pipeline whose UNet carries the LoRA, folder of the LoRA file)."""
    root = tmp_path_factory.mktemp("lora")
    folder, reference = tiny_sd_folder(root)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    torch.manual_seed(5)
    reference.unet.add_adapter(config)
    diffusers.StableDiffusionPipeline.save_lora_weights(
        root / "lora", unet_lora_layers=get_peft_model_state_dict(reference.unet),
        unet_lora_adapter_metadata=config.to_dict())                 # alpha 8 travels in the header
    return folder, reference, root / "lora"


def inputs(size: int = 64):
    """64x64 latents: the upsampler sees 32x32, where SDUpsample takes its sub-pixel path."""
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 4, size, size, generator=g), torch.tensor([10.0, 700.0]), torch.randn(2, 7, 32, generator=g)


def ours(pipe, x, t, context):
    with torch.no_grad():
        return pipe.model.unet(x, t, context=context)


def relative(a, b) -> float:
    return float((a - b).norm() / b.norm())


def kohya_file(src, dst, alpha: float = 8.0):
    """The inverse of the kohya map: ``unet.<m>.lora_A.weight`` -> ``lora_unet_<m with _>.lora_down.weight``,
    lora_B -> lora_up, and an ``alpha`` per module (scale alpha / r, as the diffusers file's header says)."""
    out = {}
    for key, tensor in load_file(str(src)).items():
        module, part = key.removeprefix("unet.").rsplit(".lora_", 1)
        flat = "lora_unet_" + module.replace(".", "_")
        out[f"{flat}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = tensor
        out[f"{flat}.alpha"] = torch.tensor(alpha)
    save_file(out, str(dst))
    return dst


def test_unet_output_equals_diffusers_lora_unet(setup):
    folder, reference, lora = setup
    pipe = difflab.Pipeline.from_pretrained(folder)
    x, t, context = inputs()
    base = ours(pipe, x, t, context)
    assert pipe.load_lora(lora) == "lora"
    assert type(pipe.model.unet.up[0].resample.conv).__name__ == "Conv2d" and \
        hasattr(pipe.model.unet.up[0].resample.conv, "lora_A")        # the upsampler is adapted (peft's Conv2d)
    with torch.no_grad():
        expected = reference.unet(x, t, encoder_hidden_states=context).sample
    adapted = ours(pipe, x, t, context)
    assert relative(adapted, expected) < 1e-4, relative(adapted, expected)
    assert relative(adapted, base) > 1e-2                             # the LoRA does change the output
    pipe.unload_lora()
    assert torch.equal(ours(pipe, x, t, context), base)               # the original modules are back
    assert not hasattr(pipe.model.unet, "peft_config") and pipe.loras == []


def test_images_equal_diffusers_load_lora_weights(setup):
    folder, _, lora = setup
    reference = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(lora)
    pipe = difflab.Pipeline.from_pretrained(folder)
    pipe.load_lora(lora / WEIGHT_NAME, scale=1.0, name="style")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    expected = reference(PROMPT, num_inference_steps=4, guidance_scale=7.5, latents=latents.clone(),
                         output_type="np").images
    result = pipe(PROMPT, steps=4, guidance_scale=7.5, latents=latents)
    mine = np.asarray(result.images[0], dtype=np.float64)[None] / 255
    assert np.abs(mine - expected).mean() <= 1 / 255, np.abs(mine - expected).mean()


def test_scales_combine_and_unload_one(setup):
    folder, _, lora = setup
    pipe = difflab.Pipeline.from_pretrained(folder)
    x, t, context = inputs()
    base = ours(pipe, x, t, context)
    pipe.load_lora(lora, scale=0.0)
    assert relative(ours(pipe, x, t, context), base) < 1e-6          # plain path instead of sub-pixel: rounding only
    pipe.set_lora_scale("lora", 1.0)
    full = ours(pipe, x, t, context)
    pipe.unload_lora("lora")
    pipe.load_lora(lora, scale=0.5, name="a")
    half = ours(pipe, x, t, context)
    pipe.load_lora(lora, scale=0.5, name="b")                         # two halves: the whole delta
    assert relative(ours(pipe, x, t, context), full) < 1e-5
    pipe.unload_lora("a")
    assert relative(ours(pipe, x, t, context), half) < 1e-6
    pipe.unload_lora()
    assert torch.equal(ours(pipe, x, t, context), base)


def test_fuse_and_unfuse(setup):
    folder, _, lora = setup
    pipe = difflab.Pipeline.from_pretrained(folder)
    x, t, context = inputs()
    base = ours(pipe, x, t, context)
    pipe.load_lora(lora, scale=0.7)
    unfused = ours(pipe, x, t, context)
    pipe.fuse_lora()
    assert relative(ours(pipe, x, t, context), unfused) < 1e-5
    with pytest.raises(ValueError, match="unfuse_lora"):
        pipe.load_lora(lora, name="other")
    pipe.unfuse_lora()
    assert relative(ours(pipe, x, t, context), unfused) < 1e-5
    pipe.fuse_lora().unload_lora()                                    # unloading a fused LoRA unfuses first
    assert relative(ours(pipe, x, t, context), base) < 1e-5


def test_kohya_layout_loads_to_the_same_network(setup, tmp_path):
    folder, _, lora = setup
    kohya = kohya_file(lora / WEIGHT_NAME, tmp_path / "kohya.safetensors")
    x, t, context = inputs()
    pipe = difflab.Pipeline.from_pretrained(folder)
    pipe.load_lora(lora)
    expected = ours(pipe, x, t, context)
    pipe.unload_lora().load_lora(kohya)
    assert torch.equal(ours(pipe, x, t, context), expected)
    # diffusers' own kohya converter reads our file to the same network: the inverse map is kohya's
    reference = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    reference.load_lora_weights(str(tmp_path), weight_name="kohya.safetensors")
    with torch.no_grad():
        theirs = reference.unet(x, t, encoder_hidden_states=context).sample
    assert relative(expected, theirs) < 1e-4, relative(expected, theirs)


def test_old_diffusers_layout(setup, tmp_path):
    folder, _, lora = setup
    old = {}
    for key, tensor in load_file(str(lora / WEIGHT_NAME)).items():
        module, part = key.rsplit(".lora_", 1)
        old[f"{module}.lora.{'down' if part.startswith('A') else 'up'}.weight"] = tensor
        old[f"{module}.alpha"] = torch.tensor(8.0)
    save_file(old, str(tmp_path / "old.safetensors"))
    pipe = difflab.Pipeline.from_pretrained(folder)
    x, t, context = inputs(16)
    pipe.load_lora(lora)
    expected = ours(pipe, x, t, context)
    pipe.unload_lora().load_lora(tmp_path / "old.safetensors")
    assert torch.equal(ours(pipe, x, t, context), expected)


def test_refusals_name_the_key(setup, tmp_path):
    folder, _, lora = setup
    pipe = difflab.Pipeline.from_pretrained(folder)
    tensors = load_file(str(lora / WEIGHT_NAME))
    a, b = torch.zeros(4, 32), torch.zeros(32, 4)
    wrong = "unet.down_blocks.5.attentions.0.proj_in"
    save_file({**tensors, f"{wrong}.lora_A.weight": a, f"{wrong}.lora_B.weight": b}, str(tmp_path / "part.safetensors"))
    with pytest.raises(ValueError, match=r"1 of its \d+ modules have no place.*down_blocks\.5\.attentions"):
        pipe.load_lora(tmp_path / "part.safetensors")
    save_file({"lora_unet_input_blocks_99_1_proj_in.lora_down.weight": a,
               "lora_unet_input_blocks_99_1_proj_in.lora_up.weight": b}, str(tmp_path / "none.safetensors"))
    with pytest.raises(ValueError, match="none of its keys match.*lora_unet_input_blocks_99_1_proj_in"):
        pipe.load_lora(tmp_path / "none.safetensors")
    save_file({"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": a},
              str(tmp_path / "te.safetensors"))
    with pytest.raises(ValueError, match="text-encoder LoRA keys are not supported yet"):
        pipe.load_lora(tmp_path / "te.safetensors")
    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"
    save_file({**tensors, key: torch.zeros(4, 31)}, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ValueError, match="does not fit the layer's"):
        pipe.load_lora(tmp_path / "shape.safetensors")
    with pytest.raises(ValueError, match="scale must be a number"):
        pipe.load_lora(lora, scale=float("nan"))
    pipe.load_lora(lora)
    with pytest.raises(ValueError, match="already loaded"):
        pipe.load_lora(lora)
    with pytest.raises(ValueError, match="no LoRA named 'x'"):
        pipe.unload_lora("x")
    (loaded,) = loaded_loras(pipe.model)                              # the refused files left nothing behind
    assert loaded.name == "lora" and loaded.scale == 1.0 and len(loaded.sha256) == 64


def test_recipes_record_loras_and_replay_only_with_them(setup, tmp_path):
    folder, _, lora = setup
    pipe = difflab.Pipeline.from_pretrained(folder)
    pipe.load_lora(lora / WEIGHT_NAME, scale=0.7, name="style")
    result = pipe(PROMPT, steps=3, seed=4, width=64, height=64)
    entry = result.recipes[0]["loras"]
    assert [(e["name"], e["scale"]) for e in entry] == [("style", 0.7)] and len(entry[0]["sha256"]) == 64
    recipe = difflab.pipelines.read_recipe(result.save(tmp_path)[0])
    assert np.array_equal(np.asarray(pipe.replay(recipe).images[0]), np.asarray(result.images[0]))
    plain = difflab.Pipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match="made with LoRAs style:0.7"):
        plain.replay(recipe)
    plain.load_lora(lora / WEIGHT_NAME, scale=1.0)
    with pytest.raises(ValueError, match="same scales"):
        plain.replay(recipe)


def test_cli_lora_flag(setup, tmp_path):
    import subprocess
    import sys
    folder, _, lora = setup
    args = [sys.executable, "-m", "difflab", "generate", PROMPT, "--model", str(folder), "--steps", "2", "--seed", "1",
            "--out", str(tmp_path / "out")]
    run = subprocess.run(args + ["--lora", f"{lora / WEIGHT_NAME}:0.5"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-1500:]
    recipe = difflab.pipelines.read_recipe(run.stdout.split()[-1])
    assert recipe["loras"][0]["scale"] == 0.5
    bad = subprocess.run(args + ["--lora", f"{lora / WEIGHT_NAME}:50"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "the scale must be a number in [-10, 10]" in bad.stderr
