"""A diffusers ControlNet folder steers difflab's Stable Diffusion pipelines as diffusers' ControlNet
pipelines: tiny random SD 1.x and SDXL models and ControlNets (``ControlNetModel.from_unet``, then its
zero convolutions and the hint encoder's last convolution made random, so the control changes the
image), the same control image and initial latents on both sides, the same images. Nothing is
downloaded."""

from __future__ import annotations

import json

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import difflab
from difflab.convert.diffusers_controlnet import is_diffusers_controlnet, load_diffusers_controlnet
from test_convert_sd_pipeline import PROMPT, tiny_sd_folder, tiny_sdxl_folder

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers
HINT = (16, 32)       # one 2x downsampling: the tiny VAE's (a published SD ControlNet has four widths, 8x)


def tiny_controlnet(unet, folder, seed: int = 0) -> diffusers.ControlNetModel:
    """diffusers' ControlNet of ``unet`` with random zero convolutions and hint output, saved to ``folder``."""
    controlnet = diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT)
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                       controlnet.controlnet_cond_embedding.conv_out):
            for parameter in module.parameters():
                parameter.normal_(std=0.3)
    controlnet.save_pretrained(folder)
    return controlnet.eval()


def unit_eps(folder, reference) -> None:
    """The tiny random UNet's prediction is ~0.1 in size; a trained one's eps is ~1, which makes the
    prediction (and so the control) shape the image rather than the initial noise alone."""
    with torch.no_grad():
        for parameter in reference.unet.conv_out.parameters():
            parameter.mul_(10.0)
    reference.unet.save_pretrained(folder / "unet")


def control_image(size: tuple[int, int] = (16, 16)) -> Image.Image:
    """A white square on black with a noisy band: an edge map's kind of input."""
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    pixels[3:11, 4:12] = 255
    pixels[12:] = np.random.default_rng(0).integers(0, 256, (size[1] - 12, size[0], 3))
    return Image.fromarray(pixels)


def as_array(images) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.float64) / 255 for image in images])


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    folder, reference = tiny_sd_folder(root)
    unit_eps(folder, reference)
    controlnet = tiny_controlnet(reference.unet, root / "controlnet")
    steered = diffusers.StableDiffusionControlNetPipeline(**reference.components, controlnet=controlnet)
    steered.set_progress_bar_config(disable=True)
    return folder, root / "controlnet", steered


@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_sd_controlnet_images_equal_diffusers(sd, guidance):
    folder, controlnet, reference = sd
    pipe = difflab.Pipeline.from_pretrained(folder, controlnet=controlnet)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    prompts, image = [PROMPT, "two blue squares"], control_image()
    expected = reference(prompts, image=image, num_inference_steps=4, guidance_scale=guidance,
                         latents=latents.clone(), output_type="np").images                   # [2, 16, 16, 3]
    steered = pipe(prompts, steps=4, guidance_scale=guidance, latents=latents, control_image=image)
    ours = as_array(steered.images)
    assert np.abs(ours - expected).max() <= 1 / 255, np.abs(ours - expected).max()
    plain = as_array(pipe(prompts, steps=4, guidance_scale=guidance, latents=latents).images)
    assert np.abs(ours - plain).mean() > 2 / 255 and np.abs(ours - plain).max() > 8 / 255   # the control acts
    off = pipe(prompts, steps=4, guidance_scale=guidance, latents=latents, control_image=image, control_scale=0.0)
    assert np.array_equal(as_array(off.images), plain)
    assert steered.recipes[0]["controlnets"][0]["name"] == "controlnet"


def test_sdxl_controlnet_images_equal_diffusers(tmp_path):
    folder, reference = tiny_sdxl_folder(tmp_path)
    unit_eps(folder, reference)
    controlnet = tiny_controlnet(reference.unet, tmp_path / "controlnet")
    steered = diffusers.StableDiffusionXLControlNetPipeline(**reference.components, controlnet=controlnet)
    steered.set_progress_bar_config(disable=True)
    pipe = difflab.Pipeline.from_pretrained(folder, controlnet=tmp_path / "controlnet")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    expected = steered(PROMPT, image=control_image(), num_inference_steps=4, guidance_scale=5.0,
                       latents=latents.clone(), output_type="np").images
    ours = as_array(pipe(PROMPT, steps=4, guidance_scale=5.0, latents=latents, control_image=control_image()).images)
    assert np.abs(ours - expected).max() <= 1 / 255, np.abs(ours - expected).max()
    plain = as_array(pipe(PROMPT, steps=4, guidance_scale=5.0, latents=latents).images)
    assert np.abs(ours - plain).mean() > 2 / 255 and np.abs(ours - plain).max() > 8 / 255


def test_controlnet_of_another_unet_or_config_is_refused(sd, tmp_path):
    folder, controlnet, _ = sd
    other = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8)
    tiny_controlnet(other, tmp_path / "other")
    pipe = difflab.Pipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"made for another network: its UNet's channels \(16, 32\) vs \(32, 64\)"):
        pipe.load_controlnet(tmp_path / "other")
    with pytest.raises(ValueError, match="steers a Stable Diffusion UNet; this pipeline's network is a UNet"):
        difflab.Pipeline.from_pretrained().load_controlnet(controlnet)
    assert not pipe.controlnets and is_diffusers_controlnet(controlnet) and not is_diffusers_controlnet(folder)

    config = json.loads((controlnet / "config.json").read_text())
    for edit, words in [({"global_pool_conditions": True}, "global_pool_conditions=true"),
                        ({"mid_block_type": "UNetMidBlock2D"}, r"config \(its UNet part\): .*mid_block_type")]:
        (tmp_path / "edited").mkdir(exist_ok=True)
        (tmp_path / "edited" / "config.json").write_text(json.dumps({**config, **edit}))
        save_file({}, tmp_path / "edited" / "diffusion_pytorch_model.safetensors")
        with pytest.raises(ValueError, match=words):
            load_diffusers_controlnet(tmp_path / "edited")
    tensors = load_file(controlnet / "diffusion_pytorch_model.safetensors")
    tensors["controlnet_mid_block.extra"] = tensors.pop("controlnet_mid_block.bias")
    (tmp_path / "edited" / "config.json").write_text(json.dumps(config))
    save_file(tensors, tmp_path / "edited" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match="tensor 'controlnet_mid_block.extra' has no place in SDControlNet"):
        load_diffusers_controlnet(tmp_path / "edited")


def test_a_new_controlnet_of_a_unet_adds_nothing(sd):
    from difflab.models.sd_controlnet import SDControlNet
    folder, _, _ = sd
    unet = difflab.Pipeline.from_pretrained(folder).model.unet
    controlnet = SDControlNet.from_unet(unet, hint_channels=HINT)
    x, context = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 32)
    skips, mid = controlnet(x, 500, torch.rand(1, 3, 16, 16), context=context)
    assert controlnet.steers(unet) and controlnet.hint_stride == 2 and len(skips) == 4
    assert all(not s.any() for s in skips) and not mid.any()
    assert torch.equal(unet(x, 500, context, control_residuals=(skips, mid)), unet(x, 500, context))
    with pytest.raises(ValueError, match=r"control must have shape \[1, 3, 16, 16\]"):
        controlnet(x, 500, torch.rand(1, 3, 8, 8), context=context)
