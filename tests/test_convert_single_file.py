"""Single-file checkpoints (the original CompVis / Stability layout, no config, nothing downloaded).

Tiny random SD 1.x-, SD 2.x- and SDXL-like diffusers pipelines (built here with the families'
published constants where shapes cannot tell: GroupNorm 32, heads of width 64 or SD 1.x's 8, CLIP's
49408-token vocabulary and activations, the VAE scaling factors) are written as single files, and
``load_single_file`` must give the pipeline that ``Pipeline.from_pretrained(folder)`` gives: the same
configs and the same images from the same latents.

How the files are known to be in the original layout: the UNet and VAE are renamed with the inverse
maps of :mod:`difflab.convert.diffusers_unet` / ``diffusers_vae`` (whose own tests read them back
with diffusers' single-file converter); the text encoders with
:func:`~difflab.convert.original_clip.original_from_clip_state`, which diffusers' own
``convert_ldm_clip_checkpoint`` and ``convert_open_clip_checkpoint`` (``diffusers.loaders.single_file_utils``,
an independent reading of the original names: in_proj split, projection transposed) turn back into
the transformers state dict exactly (:func:`test_text_layouts_read_back_by_diffusers`). The
tokenizer is compared with ``transformers.CLIPTokenizer`` loaded from a ``vocab.json`` and
``merges.txt`` that this test rebuilds from the BPE file with transformers' own byte alphabet.
"""

from __future__ import annotations

import gzip
import json

import diffusers
import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import save_file

import difflab
from difflab.convert import diffusers_unet, diffusers_vae
from difflab.convert.original_clip import BPE_FILE, PUBLISHED, clip_tokenizer, original_from_clip_state, text_config
from difflab.convert.single_file import VAE, detect_family, load_single_file, unet_config, vae_config
from difflab.models.sd_unet import SD_UNET_CONFIGS, SDUNet, SDUNetConfig
from difflab.models.vae import VAE_CONFIGS, AutoencoderKL, AutoencoderKLConfig

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
PROMPTS = ["a red circle above a blue square", "Two BLUE squares, left of   a café! 123", "",
           "a photo of a cat " * 12]
TEXT_PREFIX = {"sd1": ["cond_stage_model.transformer."], "sd2": ["cond_stage_model.model."],
               "sdxl": ["conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."]}


def reference_tokenizer(folder, pad_token: str) -> transformers.CLIPTokenizer:
    """transformers' CLIPTokenizer from vocab.json / merges.txt rebuilt here from the BPE file."""
    folder.mkdir(parents=True, exist_ok=True)
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    merges = gzip.open(BPE_FILE).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens + ["<|startoftext|>",
                                                                                          "<|endoftext|>"])}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad_token,
                                      model_max_length=77)


@pytest.mark.parametrize("pad_token", ["<|endoftext|>", "!"])
def test_tokenizer_equals_transformers_from_files(tmp_path, pad_token):
    ours, reference = clip_tokenizer(pad_token), reference_tokenizer(tmp_path, pad_token)
    assert len(ours) == len(reference) == 49408 and ours.pad_token_id == reference.pad_token_id
    args = dict(padding="max_length", truncation=True, max_length=77)
    assert ours(PROMPTS, **args)["input_ids"] == reference(PROMPTS, **args)["input_ids"]
    assert ours("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]  # CLIP's known ids
    assert ours("", **args)["input_ids"][2] == (0 if pad_token == "!" else 49407)


def randomise(module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


def clip(width: int, act: str, projection: int | None = None, layers: int = 2):
    config = transformers.CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=2 * width + 3,
                                         num_hidden_layers=layers, num_attention_heads=width // 64, hidden_act=act,
                                         max_position_embeddings=77, eos_token_id=49407, bos_token_id=49406,
                                         projection_dim=projection or 512)
    return (transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel)(config).eval()


def tiny_pipeline(root, family: str):
    """A tiny random diffusers pipeline of ``family``, saved to ``root / family``."""
    torch.manual_seed(0)
    unet_args = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=32)
    vae = diffusers.AutoencoderKL(block_out_channels=(32, 64), latent_channels=4, norm_num_groups=32,
                                  layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2,
                                  scaling_factor=0.13025 if family == "sdxl" else 0.18215)
    scheduler = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                                 timestep_spacing="leading", steps_offset=1,
                                                 prediction_type="v_prediction" if family == "sd2" else "epsilon")
    if family == "sdxl":
        text, text_2 = clip(64, "quick_gelu"), clip(128, "gelu", projection=32)
        unet = diffusers.UNet2DConditionModel(
            **unet_args, block_out_channels=(64, 128), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=192, attention_head_dim=(1, 2),
            transformer_layers_per_block=(1, 2), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8)
        for i, module in enumerate((text, text_2, unet, vae)):
            randomise(module, i)
        pipe = diffusers.StableDiffusionXLPipeline(
            vae=vae, text_encoder=text, text_encoder_2=text_2, unet=unet, scheduler=scheduler,
            tokenizer=reference_tokenizer(root / "tok", "<|endoftext|>"),
            tokenizer_2=reference_tokenizer(root / "tok2", "!"))
    else:
        sd2 = family == "sd2"
        text = clip(64, "gelu" if sd2 else "quick_gelu")
        unet = diffusers.UNet2DConditionModel(
            **unet_args, block_out_channels=(64, 128) if sd2 else (32, 64), cross_attention_dim=64,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(1, 2) if sd2 else 8,
            use_linear_projection=sd2)
        for i, module in enumerate((text, unet, vae)):
            randomise(module, i)
        pipe = diffusers.StableDiffusionPipeline(
            vae=vae, text_encoder=text, unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
            tokenizer=reference_tokenizer(root / "tok", "!" if sd2 else "<|endoftext|>"), requires_safety_checker=False)
    pipe.save_pretrained(root / family)
    return root / family, pipe


def original_state(pipe, family: str) -> dict[str, torch.Tensor]:
    """The pipeline's weights as a single file holds them (plus what real files carry beside them)."""
    state = diffusers_unet.original_from_diffusers_state(pipe.unet.state_dict(),
                                                         SDUNetConfig.from_diffusers(dict(pipe.unet.config)))
    state |= diffusers_vae.original_from_diffusers_state(pipe.vae.state_dict(),
                                                         AutoencoderKLConfig.from_diffusers(dict(pipe.vae.config)))
    if family == "sd1":
        state |= original_from_clip_state(pipe.text_encoder.state_dict(), "hf", TEXT_PREFIX["sd1"][0])
        state[TEXT_PREFIX["sd1"][0] + "text_model.embeddings.position_ids"] = torch.arange(77)[None]
        state["alphas_cumprod"] = torch.linspace(0.99, 0.01, 1000)                    # LDM's schedule buffers
    elif family == "sd2":
        # the file's tower has one block more (SD 2.x reads the penultimate one), a projection and logit_scale
        text = clip(64, "gelu", projection=32, layers=3)
        randomise(text, 9)
        tower = {k: v for k, v in text.state_dict().items() if "layers.2." in k or "text_projection" in k}
        tower |= pipe.text_encoder.state_dict()
        state |= original_from_clip_state(tower, "open_clip", TEXT_PREFIX["sd2"][0])
        state[TEXT_PREFIX["sd2"][0] + "logit_scale"] = torch.tensor(4.6)
    else:
        state |= original_from_clip_state(pipe.text_encoder.state_dict(), "hf", TEXT_PREFIX["sdxl"][0])
        state |= original_from_clip_state(pipe.text_encoder_2.state_dict(), "open_clip", TEXT_PREFIX["sdxl"][1])
        state[TEXT_PREFIX["sdxl"][1] + "logit_scale"] = torch.tensor(4.6)
    return state


def write(state: dict, path):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_single_file_equals_folder(tmp_path, family):
    folder, pipe = tiny_pipeline(tmp_path, family)
    path = write(original_state(pipe, family), tmp_path / f"{family}.safetensors")
    ours, theirs = difflab.Pipeline.from_pretrained(path), difflab.Pipeline.from_pretrained(folder)
    assert ours.prediction_type == theirs.prediction_type == ("v_prediction" if family == "sd2" else "epsilon")
    assert ours.model.unet.config == SDUNetConfig(**{**vars(theirs.model.unet.config), "sample_size": None})
    assert ours.vae.config == theirs.vae.config and type(ours.model) is type(theirs.model)
    for mine, reference in zip(ours.encoder.encode(PROMPTS), theirs.encoder.encode(PROMPTS)):  # tokens, mask, pooled
        assert torch.equal(mine, reference)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    args = dict(steps=3, sampler="euler", spacing="leading", guidance_scale=5.0, width=16, height=16, latents=latents)
    negative = "a green triangle" if family == "sdxl" else None
    images = [np.stack([np.asarray(image, dtype=np.int16)
                        for image in pipe(PROMPTS[:2], negative_prompt=negative, **args).images])
              for pipe in (ours, theirs)]
    assert np.abs(images[0] - images[1]).max() <= 1, np.abs(images[0] - images[1]).max()
    if family == "sd2":   # the same file as Stability's sgm code writes it, and the -base models' epsilon rule
        sgm = {k.replace("cond_stage_model.model.", "conditioner.embedders.0.model."): v for k, v in
               original_state(pipe, family).items()}
        base = load_single_file(write(sgm, tmp_path / "sgm.safetensors"), prediction_type="epsilon")
        assert base["prediction_type"] == "epsilon" and base["resolution"] == 512
        assert torch.equal(base["conditioner"].encoder.encode(PROMPTS)[0], theirs.encoder.encode(PROMPTS)[0])


def test_text_layouts_read_back_by_diffusers():
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    for model, layout, prefix in ((clip(64, "quick_gelu"), "hf", "cond_stage_model.transformer."),
                                  (clip(128, "gelu", projection=32), "open_clip", "conditioner.embedders.1.model.")):
        randomise(model, 3)
        state = {("text_model." + k if not k.startswith(("text_model.", "text_projection")) else k): v
                 for k, v in model.state_dict().items()}
        original = original_from_clip_state(model.state_dict(), layout, prefix)
        back = (convert_ldm_clip_checkpoint(original) if layout == "hf"
                else convert_open_clip_checkpoint(model, original, prefix=prefix))
        assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


# family -> its text towers: (prefix, layout, published config, blocks in the file, projection width)
TOWERS = {"sd1": [("cond_stage_model.transformer.", "hf", "clip_l", 12, None)],
          "sd2": [("cond_stage_model.model.", "open_clip", "open_clip_h_penultimate", 24, 1024)],
          "sdxl": [("conditioner.embedders.0.transformer.", "hf", "clip_l", 12, None),
                   ("conditioner.embedders.1.model.", "open_clip", "open_clip_bigg", 32, 1280)]}


def published_shapes(family: str) -> dict[str, tuple]:
    """Key -> shape of a full-size single file of ``family``, from meta tensors (no weights)."""
    shapes = {}
    with torch.device("meta"):
        unet, vae = SDUNet(config=SD_UNET_CONFIGS[family]), AutoencoderKL(config=VAE_CONFIGS[
            "sdxl" if family == "sdxl" else "sd"])
        for prefix, layout, name, blocks, projection in TOWERS[family]:
            config = transformers.CLIPTextConfig(**{**PUBLISHED[name], "num_hidden_layers": blocks,
                                                    "projection_dim": projection or 512})
            text = (transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel)(config)
            original = original_from_clip_state(text.state_dict(), layout, prefix)
            shapes |= {k: tuple(v.shape) for k, v in original.items()}
    unet_names, vae_names = diffusers_unet.module_table(unet.config), diffusers_vae.module_table(vae.config)
    for key, value in unet.state_dict().items():
        module, _, param = key.rpartition(".")
        shapes[f"model.diffusion_model.{unet_names[module][1]}.{param}"] = tuple(value.shape)
    for key, value in vae.state_dict().items():
        module, _, param = key.rpartition(".")
        shapes |= {f"{VAE}{name}.{param}": tuple(value.shape) for name in vae_names[module][2]}
    return shapes


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_published_configs_come_back_from_shapes(family):
    """The shapes of a full-size file give exactly the published UNet, VAE and text configs."""
    shapes = published_shapes(family)
    assert detect_family(shapes) == family
    assert unet_config(shapes, family, 1280 if family == "sdxl" else None) == SD_UNET_CONFIGS[family]
    assert vae_config(shapes, family) == VAE_CONFIGS["sdxl" if family == "sdxl" else "sd"]
    for prefix, layout, name, _, _ in TOWERS[family]:
        tower = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
        config = text_config(tower, layout, penultimate=family == "sd2")
        assert {k: config[k] for k in PUBLISHED[name]} == PUBLISHED[name]
        assert config["vocab_size"] == 49408 and config["max_position_embeddings"] == 77


@pytest.fixture(scope="module")
def sd1_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd1")
    _, pipe = tiny_pipeline(root, "sd1")
    return original_state(pipe, "sd1"), root


def test_refusals_are_one_line(sd1_file):
    state, root = sd1_file
    cases = {
        "model.ckpt": (None, "pickle checkpoint"),
        "unknown.safetensors": ({"transformer.blocks.0.weight": torch.zeros(2)}, r"found: transformer.blocks \(1\)"),
        "stray.safetensors": (state | {"extra.thing": torch.zeros(1)}, "'extra.thing' belongs to no part"),
        "no_vae.safetensors": ({k: v for k, v in state.items() if not k.startswith(VAE)},
                               r"it has no VAE \(first_stage_model\.\*\); found: model.diffusion_model"),
        "refiner.safetensors": ({"conditioner.embedders.0.model.transformer.resblocks.0.ln_1.weight": torch.zeros(2),
                                 "model.diffusion_model.label_emb.0.0.weight": torch.zeros(2, 2)}, "SDXL refiner"),
        "shape.safetensors": (state | {"cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.weight":
                                       torch.zeros(64, 7)}, r"has shape \[64, 7\], but CLIPTextModel's"),
        "unet_shape.safetensors": (state | {"model.diffusion_model.out.0.weight": torch.zeros(5)},
                                   r"'out.0.weight' has shape \[5\]"),
        "missing.safetensors": ({k: v for k, v in state.items() if "final_layer_norm.bias" not in k},
                                "missing tensor 'cond_stage_model.transformer.text_model.final_layer_norm.bias'"),
    }
    for name, (tensors, message) in cases.items():
        path = root / name
        if tensors is None:
            path.write_bytes(b"\x80\x04 a pickle would run code here")
        else:
            write(tensors, path)
        with pytest.raises(ValueError, match=message) as error:
            load_single_file(path)
        assert "\n" not in str(error.value), str(error.value)
    data = write(state, root / "whole.safetensors").read_bytes()
    (root / "truncated.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="not a complete safetensors file"):
        load_single_file(root / "truncated.safetensors")
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        load_single_file(root / "whole.safetensors", prediction_type="flow")


def test_comfyui_markers(sd1_file):
    """ComfyUI's marker tensors: ``v_pred`` (v-prediction), with ``ztsnr`` a zero-terminal-SNR schedule."""
    state, root = sd1_file
    parts = load_single_file(write(state | {"v_pred": torch.zeros(0), "ztsnr": torch.zeros(0)},
                                   root / "vpred.safetensors"))
    assert parts["prediction_type"] == "v_prediction" and parts["defaults"]["spacing"] == "trailing"
    assert parts["schedule"].rescale_zero_terminal_snr
    assert load_single_file(root / "vpred.safetensors", prediction_type="epsilon")["prediction_type"] == "epsilon"
