"""Autoencoder weights from diffusers folders and the original single-file layout in difflab's AutoencoderKL.

Tiny random diffusers models (every parameter randomised: diffusers zero-initialises some) are the
reference: difflab's network must give their posteriors and decodings; the original layout is made
by the converter's own inverse and checked against diffusers' single-file converter; every refusal
is one line naming the key or setting.
"""

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from difflab.convert.diffusers_vae import (key_map, load_diffusers_vae, load_single_file_vae,
                                           original_from_diffusers_state, vae_from_diffusers_state)
from difflab.models.vae import VAE_CONFIGS, AutoencoderKL, AutoencoderKLConfig

import diffusers  # the [dev] extra: a reference, never skipped

WEIGHTS = "diffusion_pytorch_model.safetensors"
CONFIGS = {  # tiny diffusers AutoencoderKL settings; norm_num_groups 8 throughout
    "sd_1_layer": dict(block_out_channels=(32, 64), layers_per_block=1),
    "sd_2_layers_3_levels": dict(block_out_channels=(32, 64, 64), layers_per_block=2, scaling_factor=0.13025),
    "flux_like": dict(block_out_channels=(32, 64), layers_per_block=1, latent_channels=16, use_quant_conv=False,
                      use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159),
    "no_mid_attention": dict(block_out_channels=(32, 64), layers_per_block=1, mid_block_add_attention=False),
}


def diffusers_vae(settings: dict, seed: int = 0):
    n = len(settings["block_out_channels"])
    vae = diffusers.AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * n,
                                  up_block_types=("UpDecoderBlock2D",) * n, norm_num_groups=8, **settings)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in vae.parameters():                                   # fan-in scaled, so activations stay O(1)
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))
    return vae.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (diffusers reference, its saved folder)."""
    out = {}
    for i, (name, settings) in enumerate(CONFIGS.items()):
        ref, folder = diffusers_vae(settings, seed=i), tmp_path_factory.mktemp(name)
        ref.save_pretrained(folder, safe_serialization=True)
        out[name] = ref, folder
    return out


def assert_close(ours: torch.Tensor, ref: torch.Tensor):
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() <= 1e-4 * ref.abs().max()


@torch.no_grad()
def assert_same_outputs(vae: AutoencoderKL, ref):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    expected, posterior = ref.encode(x).latent_dist, vae.encode(x)
    assert_close(posterior.mean, expected.mean)
    assert_close(posterior.logvar, expected.logvar)
    z = expected.sample(torch.Generator().manual_seed(2))
    assert_close(vae.decode(z), ref.decode(z).sample)


def assert_same_state(a: AutoencoderKL, b: AutoencoderKL):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", CONFIGS)
def test_diffusers_folder_gives_diffusers_outputs(saved, name):
    ref, folder = saved[name]
    vae = load_diffusers_vae(folder)
    assert_same_outputs(vae, ref)
    assert vae.config.scaling_factor == ref.config.scaling_factor
    assert vae.config.shift_factor == (ref.config.shift_factor or 0.0)
    assert vae.config.quant_conv == ref.config.use_quant_conv and not vae.training
    # eps 1e-5 for 1e-6 moves these outputs by ~1e-6 of their size, below the tolerance: compared directly
    eps = lambda net: {m.eps for m in net.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert eps(vae) == eps(ref) == {1e-6}


def test_pipeline_folder_and_dtype(saved, tmp_path):
    ref, folder = saved["sd_1_layer"]
    (tmp_path / "vae").mkdir()
    for f in folder.iterdir():
        (tmp_path / "vae" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    vae = load_diffusers_vae(tmp_path, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in vae.parameters())
    assert_same_outputs(vae.float(), ref)


@pytest.mark.parametrize("name", CONFIGS)
def test_original_layout_round_trip(saved, name, tmp_path):
    """diffusers -> original (our inverse) -> difflab equals diffusers -> difflab, and diffusers'
    own single-file converter reads our original layout back to the diffusers state exactly."""
    ref, _ = saved[name]
    state, cfg = ref.state_dict(), AutoencoderKLConfig.from_diffusers(dict(ref.config))
    standalone = name == "flux_like"                                 # FLUX's ae.safetensors has no prefix
    original = original_from_diffusers_state(state, cfg, prefix="" if standalone else "first_stage_model.")
    attention = [k for k in original if ".attn_1.q.weight" in k]
    assert all(original[k].shape[2:] == (1, 1) for k in attention) and len(attention) == 2 * cfg.mid_attention
    assert "decoder.up.0.block.0.conv1.weight" in {k.removeprefix("first_stage_model.") for k in original}
    converted = diffusers.loaders.single_file_utils.convert_ldm_vae_checkpoint(original, dict(ref.config))
    assert set(converted) == set(state) and all(torch.equal(converted[k], state[k]) for k in state)
    others = {} if standalone else {"model.diffusion_model.conv_in.weight": torch.ones(2),
                                    "cond_stage_model.transformer.x": torch.zeros(3)}
    save_file({**original, **others}, tmp_path / "checkpoint.safetensors")
    vae = load_single_file_vae(tmp_path / "checkpoint.safetensors", cfg)
    assert_same_state(vae, vae_from_diffusers_state(state, cfg))
    assert_same_outputs(vae, ref)


def test_old_diffusers_attention_names(saved, tmp_path):
    ref, folder = saved["sd_1_layer"]
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    state = load_file(folder / WEIGHTS)
    for old, new in renames.items():
        state = {k.replace(old, new): v for k, v in state.items()}
    save_file(state, tmp_path / WEIGHTS)
    (tmp_path / "config.json").write_bytes((folder / "config.json").read_bytes())
    assert_same_state(load_diffusers_vae(tmp_path), load_diffusers_vae(folder))


def test_published_families_match_diffusers_at_full_size():
    """VAE_CONFIGS at their real size: every diffusers key mapped, shapes agreeing (built on meta, no weights)."""
    settings = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    for family, cfg in VAE_CONFIGS.items():
        with torch.device("meta"):
            theirs = diffusers.AutoencoderKL(**settings, latent_channels=cfg.latent_channels,
                                             use_quant_conv=cfg.quant_conv, use_post_quant_conv=cfg.post_quant_conv)
            ours = {k: tuple(v.shape) for k, v in AutoencoderKL(config=cfg).state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
        mapping = key_map(cfg, ours)
        assert set(mapping) == set(theirs), family
        for key, shape in ours.items():
            parts = [theirs[t] for t, o in mapping.items() if o == key]
            assert (sum(p[0] for p in parts), *parts[0][1:]) == shape, (family, key)


def published_config(**changes) -> dict:
    """The keys of a published vae/config.json (SD 1.5's has no scaling_factor: diffusers' default)."""
    return {"_class_name": "AutoencoderKL", "_diffusers_version": "0.30.0", "act_fn": "silu", "in_channels": 3,
            "out_channels": 3, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "latent_channels": 4, "norm_num_groups": 32, "sample_size": 512, **changes}


@pytest.mark.parametrize("family, changes", [
    ("sd", {}),
    ("sdxl", {"force_upcast": True, "scaling_factor": 0.13025, "sample_size": 1024}),
    ("sd3", {"latent_channels": 16, "scaling_factor": 1.5305, "shift_factor": 0.0609, "latents_mean": None,
             "latents_std": None, "use_quant_conv": False, "use_post_quant_conv": False, "force_upcast": True}),
    ("flux", {"latent_channels": 16, "scaling_factor": 0.3611, "shift_factor": 0.1159, "use_quant_conv": False,
              "use_post_quant_conv": False, "mid_block_add_attention": True}),
])
def test_published_configs_read_as_the_families(family, changes):
    assert AutoencoderKLConfig.from_diffusers(published_config(**changes)) == VAE_CONFIGS[family]


# --- refusals: one line each, naming what is wrong -------------------------------------------------


def edited_folder(saved, tmp_path, edit):
    ref, folder = saved["sd_1_layer"]
    state = load_file(folder / WEIGHTS)
    edit(state)
    save_file(state, tmp_path / WEIGHTS)
    (tmp_path / "config.json").write_bytes((folder / "config.json").read_bytes())
    return tmp_path


def refusal(call) -> str:
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        call()
    message = str(error.value)
    assert "\n" not in message
    return message


def test_extra_tensor_is_named(saved, tmp_path):
    folder = edited_folder(saved, tmp_path, lambda s: s.update({"encoder.mid_block.extra.weight": torch.ones(3)}))
    message = refusal(lambda: load_diffusers_vae(folder))
    assert "tensor 'encoder.mid_block.extra.weight' has no place in AutoencoderKL" in message


def test_missing_tensor_is_named(saved, tmp_path):
    folder = edited_folder(saved, tmp_path, lambda s: s.pop("decoder.up_blocks.1.resnets.0.conv1.bias"))
    message = refusal(lambda: load_diffusers_vae(folder))
    assert "missing tensor 'decoder.up_blocks.1.resnets.0.conv1.bias' (for AutoencoderKL's 'decoder.blocks." in message


@pytest.mark.parametrize("key, shape, needs", [("quant_conv.weight", (8, 8, 3, 3), "[8, 8, 1, 1]"),
                                                ("encoder.mid_block.attentions.0.to_k.weight", (64, 32), "[64, 64]")])
def test_wrong_shape_names_key_and_both_shapes(saved, tmp_path, key, shape, needs):
    folder = edited_folder(saved, tmp_path, lambda s: s.update({key: torch.ones(shape)}))
    message = refusal(lambda: load_diffusers_vae(folder))
    assert f"tensor {key!r} has shape {list(shape)}, but AutoencoderKL's" in message and f"needs {needs}" in message


def test_single_file_with_foreign_tensors_under_the_prefix(saved, tmp_path):
    ref, _ = saved["sd_1_layer"]
    cfg = AutoencoderKLConfig.from_diffusers(dict(ref.config))
    original = original_from_diffusers_state(ref.state_dict(), cfg)
    save_file({**original, "first_stage_model.loss.logvar": torch.zeros(())}, tmp_path / "c.safetensors")
    message = refusal(lambda: load_single_file_vae(tmp_path / "c.safetensors", cfg))
    assert "tensor 'first_stage_model.loss.logvar' has no place in AutoencoderKL" in message
    assert "unknown VAE family 'sd4'" in refusal(lambda: load_single_file_vae(tmp_path / "c.safetensors", "sd4"))


@pytest.mark.parametrize("change, named", [
    ({"act_fn": "gelu"}, "act_fn='gelu' is not supported"),
    ({"out_channels": 4}, "out_channels=4 differs from in_channels=3"),
    ({"latents_mean": [0.0] * 4}, "latents_mean=[0.0, 0.0, 0.0, 0.0] is not supported"),
    ({"down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]}, "down_block_types must be 2 x"),
    ({"norm_num_groups": 12}, "norm_num_groups=12 must divide every block_out_channels entry [32, 64]"),
    ({"mid_block_add_attention": "yes"}, "mid_block_add_attention must be true or false, got 'yes'"),
    ({"layers_per_block": 0}, "layers_per_block must be a positive integer, got 0"),
    ({"temporal_compression_ratio": 4}, "unknown key(s) ['temporal_compression_ratio']"),
])
def test_unsupported_config_is_refused(saved, change, named):
    ref, _ = saved["sd_1_layer"]
    message = refusal(lambda: AutoencoderKLConfig.from_diffusers({**dict(ref.config), **change}))
    assert message.startswith("diffusers VAE config: ") and named in message


def test_folder_refusals(saved, tmp_path):
    ref, folder = saved["sd_1_layer"]
    (tmp_path / "config.json").write_text('{"_class_name": "AutoencoderTiny"}')
    assert "not AutoencoderKL" in refusal(lambda: load_diffusers_vae(tmp_path))
    (tmp_path / "config.json").write_bytes((folder / "config.json").read_bytes())
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"not opened")
    assert "only safetensors weights are loaded" in refusal(lambda: load_diffusers_vae(tmp_path))
