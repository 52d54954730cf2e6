"""A Stable Diffusion folder written by diffusers (tiny random components, built in the test: nothing
is downloaded) loads into difflab's own networks, schedule and samplers, and makes the images
diffusers' StableDiffusionPipeline makes from the same initial latents."""

from __future__ import annotations

import json

import diffusers
import numpy as np
import pytest
import torch
import transformers

import difflab
from difflab.convert.diffusers_folder import CrossAttentionOnly

PROMPT = "a red circle above a blue square"
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers


def byte_characters() -> list[str]:
    """GPT-2/CLIP's byte-level alphabet: printable bytes stand for themselves, the others are moved
    to code points from 256 up (Radford et al. 2019, the BPE on bytes)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(moved))]


def tiny_tokenizer(folder) -> transformers.CLIPTokenizer:
    """A byte-level CLIP tokenizer with no merges (every character a token), written by the test."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = byte_characters()
    vocab = {token: i for i, token in enumerate([*chars, *(c + "</w>" for c in chars), "<|startoftext|>",
                                                 "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (diffusers zero-initialises some layers, which would hide errors)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


def tiny_sd_folder(root, prediction_type="epsilon", scheduler="EulerDiscreteScheduler", spacing="leading"):
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer(root / "tok")
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id)).eval()
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8)
    vae = diffusers.AutoencoderKL(block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  norm_num_groups=8, layers_per_block=1, scaling_factor=0.5)
    for i, module in enumerate((text, unet, vae)):
        randomise(module, i)
    schedule = getattr(diffusers, scheduler)(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                             prediction_type=prediction_type, timestep_spacing=spacing, steps_offset=1)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                             scheduler=schedule, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.save_pretrained(root / "sd")
    pipe.set_progress_bar_config(disable=True)
    return root / "sd", pipe


def tiny_clip(tokenizer, projection: bool = False):
    config = transformers.CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=16)
    return (transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel)(config).eval()


def tiny_sdxl_folder(root):
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer(root / "tok")
    text, text_2 = tiny_clip(tokenizer), tiny_clip(tokenizer, projection=True)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=2, norm_num_groups=8, transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8)
    vae = diffusers.AutoencoderKL(block_out_channels=(16, 32), latent_channels=4, norm_num_groups=8,
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  layers_per_block=1, scaling_factor=0.5)
    for i, module in enumerate((text, text_2, unet, vae)):
        randomise(module, i)
    scheduler = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                                 timestep_spacing="leading", steps_offset=1)
    pipe = diffusers.StableDiffusionXLPipeline(vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=tokenizer,
                                               tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    pipe.save_pretrained(root / "sdxl")
    pipe.set_progress_bar_config(disable=True)
    return root / "sdxl", pipe


@pytest.mark.parametrize("negative,guidance", [(None, 5.0), ("a green triangle", 5.0), (None, 1.0)])
def test_sdxl_images_equal_diffusers(tmp_path, negative, guidance):
    folder, reference = tiny_sdxl_folder(tmp_path)
    pipe = difflab.Pipeline.from_pretrained(folder)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    expected = reference(PROMPT, negative_prompt=negative, num_inference_steps=4, guidance_scale=guidance,
                         latents=latents.clone(), output_type="np").images
    result = pipe(PROMPT, negative_prompt=negative, steps=4, guidance_scale=guidance, latents=latents)
    ours = np.asarray(result.images[0], dtype=np.float64)[None] / 255
    assert np.abs(ours - expected).mean() <= 1 / 255, np.abs(ours - expected).mean()


CASES = [("epsilon", "EulerDiscreteScheduler", "leading", 7.5), ("epsilon", "EulerDiscreteScheduler", "leading", 1.0),
         ("v_prediction", "DDIMScheduler", "trailing", 5.0)]


@pytest.mark.parametrize("prediction_type,scheduler,spacing,guidance", CASES)
def test_images_equal_diffusers_from_the_same_latents(tmp_path, prediction_type, scheduler, spacing, guidance):
    folder, reference = tiny_sd_folder(tmp_path, prediction_type, scheduler, spacing)
    pipe = difflab.Pipeline.from_pretrained(folder)
    assert isinstance(pipe.model, CrossAttentionOnly) and pipe.vae is not None and pipe.resolution == 16
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    expected = reference([PROMPT, "two blue squares"], num_inference_steps=4, guidance_scale=guidance,
                         latents=latents.clone(), output_type="np").images                    # [2, 16, 16, 3] in [0, 1]
    result = pipe([PROMPT, "two blue squares"], steps=4, guidance_scale=guidance, latents=latents)
    ours = np.stack([np.asarray(image, dtype=np.float64) / 255 for image in result.images])
    assert np.abs(ours - expected).mean() <= 1 / 255, np.abs(ours - expected).mean()
    assert result.recipes[0]["sampler"] == ("euler" if scheduler.startswith("Euler") else "ddim")
    assert result.recipes[0]["latents"] == "given"


def test_refusals_name_the_problem(tmp_path):
    folder, _ = tiny_sd_folder(tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyPipeline"}))
    with pytest.raises(ValueError, match="KandinskyPipeline' is not one difflab loads"):
        difflab.Pipeline.from_pretrained(folder)
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="recognised but not loadable yet"):
        difflab.Pipeline.from_pretrained(folder)
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "vae").rename(tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match="has no vae/ folder"):
        difflab.Pipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match="nor a single .safetensors checkpoint"):
        difflab.Pipeline.from_pretrained(tmp_path / "tok")


def test_info_describes_folders_and_files_from_headers_alone(tmp_path):
    import subprocess
    import sys

    folder, reference = tiny_sdxl_folder(tmp_path)
    probe = ("import sys; sys.argv[0] = 'difflab'; from difflab.cli import main\ntry:\n    main()\nfinally:\n"
             "    print('torch imported' if 'torch' in sys.modules else 'torch not imported')")

    def info(path):
        run = subprocess.run([sys.executable, "-c", probe, "info", str(path)], capture_output=True, text=True)
        return run.returncode, run.stdout, run.stderr

    code, out, _ = info(folder)
    unet_parameters = sum(p.numel() for p in reference.unet.parameters())
    assert code == 0 and "StableDiffusionXLPipeline" in out and f"{unet_parameters:,} parameters" in out
    assert out.strip().endswith("torch not imported")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(weights.read_bytes()[:100])
    code, _, err = info(truncated)
    assert code == 2 and err.count("\n") == 1 and "not valid JSON" in err
    (tmp_path / "model.ckpt").write_bytes(b"not opened")
    code, _, err = info(tmp_path / "model.ckpt")
    assert code == 2 and "only .safetensors files are read" in err


def test_vae_tiling_and_slicing_on_a_latent_pipeline(tmp_path):
    folder, _ = tiny_sd_folder(tmp_path)
    pipe = difflab.Pipeline.from_pretrained(folder)
    latents = torch.randn(2, 4, 12, 8, generator=torch.Generator().manual_seed(3))
    whole = pipe(PROMPT, num_images=2, steps=2, latents=latents, width=16, height=24)
    tiled = pipe.enable_vae_slicing().enable_vae_tiling(tile=6, overlap=2)(PROMPT, num_images=2, steps=2,
                                                                            latents=latents, width=16, height=24)
    assert [image.size for image in tiled.images] == [(16, 24)] * 2
    difference = np.abs(np.asarray(tiled.images[0], dtype=float) - np.asarray(whole.images[0], dtype=float))
    assert difference.mean() < 40  # tiles see only their neighbourhood: close, not equal
    with pytest.raises(ValueError, match="pixel space; it has no VAE"):
        difflab.Pipeline.from_pretrained("shapes").enable_vae_tiling()   # the 32x32 pixel model
