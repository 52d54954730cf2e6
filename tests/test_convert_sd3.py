"""MMDiT against diffusers' SD3Transformer2DModel, and a whole Stable Diffusion 3 folder against
diffusers' StableDiffusion3Pipeline. Nothing is downloaded: tiny random models are built here, a
byte-level CLIP tokenizer and a character-level T5 tokenizer (a ``tokenizers`` Unigram model) included.

diffusers zero-initialises the adaLN and output layers; every parameter is refilled with random
values, so a swapped, dropped or mis-ordered weight (q/k/v, scale/shift) changes the output.
Limits: no published checkpoint is read, so a naming error shared with diffusers would pass.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import diffusers  # the [dev] extra: a reference, never skipped
import transformers
import tokenizers
from test_convert_sd_pipeline import PROMPT, tiny_clip, tiny_tokenizer  # noqa: E402
from test_convert_sd_unet import randomize  # noqa: E402

import difflab  # noqa: E402
from difflab.convert.diffusers_sd3 import load_diffusers_mmdit, load_sd3, mmdit_from_tensors  # noqa: E402
from difflab.models.mmdit import MMDiT, MMDiTConfig, position_grid  # noqa: E402
from difflab.models.text_sd3 import SD3TextEncoder  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers
TINY = dict(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
            joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32, out_channels=4,
            pos_embed_max_size=16)


def tiny_transformer(seed: int = 0, **changes) -> diffusers.SD3Transformer2DModel:
    torch.manual_seed(seed)
    model = diffusers.SD3Transformer2DModel(**{**TINY, **changes}).eval()
    randomize(model, seed + 1)
    return model


@pytest.mark.parametrize("qk_norm", [None, "rms_norm"])
def test_mmdit_equals_diffusers(qk_norm):
    reference = tiny_transformer(qk_norm=qk_norm)
    ours = mmdit_from_tensors(MMDiTConfig.from_diffusers(dict(reference.config)), reference.state_dict(), "reference")
    g = torch.Generator().manual_seed(3)
    for height, width in ((8, 8), (12, 6)):                          # the config's size, and another one
        x, t = torch.randn(2, 4, height, width, generator=g), torch.tensor([999.0, 250.5])
        context, pooled = torch.randn(2, 7, 32, generator=g), torch.randn(2, 32, generator=g)
        with torch.no_grad():
            expected = reference(x, encoder_hidden_states=context, pooled_projections=pooled, timestep=t).sample
            result = ours(x, t, context, pooled, context_mask=torch.ones(2, 7, dtype=torch.bool))
        assert result.shape == expected.shape == (2, 4, height, width)
        assert (result - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_fresh_mmdit_positions_are_sd3s_and_context_mask_hides_tokens():
    reference = diffusers.SD3Transformer2DModel(**TINY)
    model = MMDiT(config=MMDiTConfig.from_diffusers(dict(reference.config)))
    assert torch.equal(model.pos_grid, reference.pos_embed.pos_embed)    # same grid before any weights are loaded
    assert torch.equal(position_grid(16, 16, 4)[None], reference.pos_embed.pos_embed)
    randomize(model, 5)
    g = torch.Generator().manual_seed(0)
    x, context, pooled = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 6, 32, generator=g), torch.randn(1, 32)
    mask = torch.tensor([[True, True, True, False, False, False]])
    with torch.no_grad():
        masked = model(x, 500.0, context, pooled, context_mask=mask)
        shorter = model(x, 500.0, context[:, :3], pooled)
    torch.testing.assert_close(masked, shorter, rtol=1e-4, atol=1e-5)


def test_transformer_folder_loads_strictly(tmp_path):
    reference = tiny_transformer(qk_norm="rms_norm")
    reference.save_pretrained(tmp_path / "transformer")
    model = load_diffusers_mmdit(tmp_path / "transformer")
    assert isinstance(model, MMDiT) and model.size_multiple == 2 and model.config.qk_norm == "rms_norm"
    state = reference.state_dict()
    with pytest.raises(ValueError, match="'extra.weight' has no place in MMDiT"):
        mmdit_from_tensors(model.config, {**state, "extra.weight": torch.zeros(1)}, "state")
    del state["transformer_blocks.1.attn.add_k_proj.weight"]
    with pytest.raises(ValueError, match="missing tensor 'transformer_blocks.1.attn.add_k_proj.weight'"):
        mmdit_from_tensors(model.config, state, "state")


@pytest.mark.parametrize("change,message", [
    (dict(dual_attention_layers=[0]), "dual_attention_layers=.0. .SD3.5 Medium"),
    (dict(caption_projection_dim=24), "caption_projection_dim=24 must equal"),
    (dict(qk_norm="layer_norm"), "qk_norm must be one of"),
    (dict(use_flux_rope=True), "unknown key.s. .'use_flux_rope'."),
])
def test_unsupported_configs_are_refused_in_one_line(change, message):
    with pytest.raises(ValueError, match=message):
        MMDiTConfig.from_diffusers({**TINY, **change})


def tiny_t5_tokenizer() -> transformers.T5TokenizerFast:
    """A character-level T5 tokenizer: a Unigram model over printable ASCII with SentencePiece's
    word-start marker, ``</s>`` appended, ``<pad>`` = 0 (T5's ids)."""
    from tokenizers import decoders, models, pre_tokenizers, processors
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + [(chr(c), -3.0) for c in range(32, 127)]
    tok = tokenizers.Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return transformers.T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                                        extra_ids=0, model_max_length=512)


def tiny_sd3_folder(root, with_t5: bool):
    torch.manual_seed(0)
    tokenizer, t5_tokenizer = tiny_tokenizer(root / "tok"), tiny_t5_tokenizer()
    clip_l, clip_g = tiny_clip(tokenizer, projection=True), tiny_clip(tokenizer, projection=True)
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=len(t5_tokenizer), d_model=64, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval()
    transformer = diffusers.SD3Transformer2DModel(**{**TINY, "in_channels": 16, "out_channels": 16,
                                                     "joint_attention_dim": 64}).eval()
    vae = diffusers.AutoencoderKL(block_out_channels=(16, 32), latent_channels=16, norm_num_groups=8,
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  layers_per_block=1, scaling_factor=1.5305, shift_factor=0.0609,
                                  use_quant_conv=False, use_post_quant_conv=False)
    for i, module in enumerate((clip_l, clip_g, t5, transformer, vae)):
        randomize(module, i)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=clip_l, tokenizer=tokenizer,
        text_encoder_2=clip_g, tokenizer_2=tokenizer, text_encoder_3=t5 if with_t5 else None,
        tokenizer_3=t5_tokenizer if with_t5 else None)
    pipe.save_pretrained(root / "sd3")
    pipe.set_progress_bar_config(disable=True)
    return root / "sd3", pipe


@pytest.mark.parametrize("with_t5,negative,guidance", [(True, None, 7.0), (False, "a green triangle", 4.0)])
def test_sd3_images_equal_diffusers(tmp_path, with_t5, negative, guidance):
    folder, reference = tiny_sd3_folder(tmp_path, with_t5)
    pipe = difflab.Pipeline.from_pretrained(folder)  # dispatched by model_index.json
    assert isinstance(pipe.model, MMDiT) and pipe.resolution == 16 and pipe.vae.config.latent_channels == 16
    assert isinstance(pipe.encoder, SD3TextEncoder) and (pipe.encoder.t5 is not None) == with_t5
    latents = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    prompts = [PROMPT, "two blue squares"]
    expected = reference(prompts, negative_prompt=negative and [negative] * 2, num_inference_steps=4,
                         guidance_scale=guidance, latents=latents.clone(), output_type="np").images  # [2, 16, 16, 3]
    result = pipe(prompts, negative_prompt=negative, steps=4, guidance_scale=guidance, latents=latents)
    ours = np.stack([np.asarray(image, dtype=np.float64) / 255 for image in result.images])
    assert np.abs(ours - expected).mean() <= 1 / 255, np.abs(ours - expected).mean()
    assert np.abs(ours - expected).max() <= 1 / 255, np.abs(ours - expected).max()   # equal up to 8-bit rounding


def test_sd3_conditioning_equals_diffusers_encode_prompt(tmp_path):
    """Tokens [B, 77 + 256, W] (CLIP-L ; CLIP-G padded, then T5) and pooled [B, 2P] as diffusers makes
    them, the empty negative prompt encoded like any other; zeros in place of T5 without one."""
    for with_t5 in (True, False):
        folder, reference = tiny_sd3_folder(tmp_path / str(with_t5), with_t5)
        conditioner = difflab.Pipeline(**load_sd3(folder)).conditioner
        with torch.no_grad():
            tokens, negative, pooled, negative_pooled = reference.encode_prompt(
                [PROMPT, "two blue squares"], None, None, do_classifier_free_guidance=True)
        ours, null = conditioner([PROMPT, "two blue squares"]), conditioner(["", ""])
        assert ours["context"].shape == (2, 77 + 256, 64) and bool(ours["context_mask"].all())
        torch.testing.assert_close(ours["context"], tokens, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours["pooled"], pooled, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(null["context"], negative, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(null["pooled"], negative_pooled, rtol=1e-5, atol=1e-5)
        assert bool(ours["context"][:, 77:].any()) == with_t5


def test_sd3_folder_refusals(tmp_path):
    folder, _ = tiny_sd3_folder(tmp_path, with_t5=False)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "text_encoder_3": ["transformers", "T5EncoderModel"]}))
    with pytest.raises(FileNotFoundError, match="has no text_encoder_3/ folder"):
        load_sd3(folder)
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="is not a StableDiffusion3Pipeline"):
        load_sd3(folder)
