"""SDUNet against diffusers' UNet2DConditionModel: same weights, same outputs; strict, one-line refusals.

Tiny random diffusers UNets stand in for Stable Diffusion 1.x, 2.x and SDXL (nothing is downloaded).
diffusers zero-initialises some layers (conv_out, proj_out); every parameter is refilled with random
values here, so a swapped or dropped weight changes the output and the parity test can fail.

The original single-file layout is tested by round trip: :func:`original_from_diffusers_state` renames a
diffusers state dict to it, and loading that must give diffusers' outputs again. Both directions
come from one table, so the round trip alone shows only that the table is a bijection with the
right shapes for these configs (every key used once, nothing missing); that the names are the ones
CompVis / Stability actually wrote is shown by diffusers' own single-file converter
(``convert_ldm_unet_checkpoint``), an independent implementation, reading our renamed dict back to
the same diffusers state dict, at tiny and at full size (SD 1.5, SD 2.1, SDXL on the meta device),
and by names and shapes of the published single files (``KNOWN_ORIGINAL``) where that converter is
lenient (it accepts an upsampler at either of two places). Limits: no real checkpoint is read, so a
naming error shared by diffusers' converter and ours, outside the listed names, would pass; and the
files' values (EMA copies, fp16) are not exercised.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from diffusers import UNet2DConditionModel  # noqa: E402
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from difflab.convert.diffusers_unet import (ORIGINAL_PREFIX, key_map, load_diffusers_unet,  # noqa: E402
                                            original_from_diffusers_state, sd_unet_from_original_state)
from difflab.models.sd_unet import SD_UNET_CONFIGS, SDUNet, SDUNetConfig  # noqa: E402

TINY = dict(cross_attention_dim=32, norm_num_groups=8, sample_size=16)
CASES = {
    # SD 1.x: 1x1-conv projections, attention_head_dim = number of heads (int), no attention at the deepest level.
    "sd1": dict(TINY, block_out_channels=(32, 64, 64), layers_per_block=1, attention_head_dim=4,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
    # SD 2.x: Linear projections, heads per level, upcast_attention (irrelevant in float32).
    "sd2": dict(TINY, block_out_channels=(32, 64), layers_per_block=2, attention_head_dim=[2, 4],
                use_linear_projection=True, upcast_attention=True,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
    # SDXL: no attention at level 0, two transformer blocks at level 1, pooled text + 6 size/crop ids.
    "sdxl": dict(TINY, block_out_channels=(32, 64), layers_per_block=2, attention_head_dim=[2, 4],
                 use_linear_projection=True, transformer_layers_per_block=[1, 2],
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), addition_embed_type="text_time",
                 addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8),
}


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random: norm gains near 1, biases small, weights scaled by 1/sqrt(fan_in)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() == 1:
                p.copy_((1.0 if "norm" in name and name.endswith("weight") else 0.0) + 0.1 * noise)
            else:
                p.copy_(noise / math.sqrt(p[0].numel()))
    return module.eval()


def inputs(case: str, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x, context = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 7, 32, generator=g)
    t = torch.tensor([10.0, 517.0])
    if case != "sdxl":
        return x, t, context, None, None
    time_ids = torch.tensor([[16.0, 16, 0, 0, 16, 16], [24.0, 12, 2, 3, 16, 16]])
    return x, t, context, torch.randn(2, 16, generator=g), time_ids


def reference(unet, x, t, context, pooled, time_ids) -> torch.Tensor:
    extra = None if pooled is None else {"text_embeds": pooled, "time_ids": time_ids}
    return unet(x, t, encoder_hidden_states=context, added_cond_kwargs=extra).sample


def assert_close(ours: torch.Tensor, ref: torch.Tensor):
    assert ours.shape == ref.shape
    err, scale = (ours - ref).abs().max().item(), ref.abs().max().item()
    assert err <= 1e-4 * scale, f"max abs diff {err:.3g} vs max abs reference {scale:.3g}"


_SAVED: dict[str, tuple] = {}


def save_case(case: str, tmp_path_factory) -> tuple:
    """(case, diffusers unet with random weights, its saved folder), made once per test session."""
    if case not in _SAVED:
        torch.manual_seed(0)
        unet = randomize(UNet2DConditionModel(**CASES[case]))
        folder = tmp_path_factory.mktemp(case) / "unet"
        unet.save_pretrained(folder)
        _SAVED[case] = case, unet, folder
    return _SAVED[case]


@pytest.fixture(scope="module", params=sorted(CASES))
def saved(request, tmp_path_factory):
    return save_case(request.param, tmp_path_factory)


@pytest.fixture()
def sd1(tmp_path_factory):
    return save_case("sd1", tmp_path_factory)


@pytest.fixture()
def sdxl(tmp_path_factory):
    return save_case("sdxl", tmp_path_factory)


@torch.no_grad()
def test_diffusers_folder_gives_diffusers_outputs(saved):
    case, unet, folder = saved
    model = load_diffusers_unet(folder)
    assert isinstance(model, SDUNet) and model.size_multiple == 2 ** (len(unet.config.block_out_channels) - 1)
    args = inputs(case)
    assert_close(model(*args), reference(unet, *args))


@torch.no_grad()
def test_original_layout_round_trip(saved):
    case, unet, folder = saved
    cfg, state = SDUNetConfig.from_diffusers(dict(unet.config)), unet.state_dict()
    original = original_from_diffusers_state(state, cfg)
    original["first_stage_model.decoder.conv_in.weight"] = torch.zeros(1)     # other components: not the UNet's
    back = convert_ldm_unet_checkpoint(original, dict(unet.config))             # diffusers' own reading of it
    assert sorted(back) == sorted(state) and all(torch.equal(back[k], state[k]) for k in state)
    args = inputs(case)
    assert_close(sd_unet_from_original_state(original, cfg)(*args), reference(unet, *args))


def test_pipeline_folder_and_registry(saved, tmp_path):
    case, unet, folder = saved
    (folder.parent / "model_index.json").write_text("{}")
    model = load_diffusers_unet(folder.parent)                                  # a pipeline folder: its unet/
    copy = SDUNet.from_pretrained(model.save_pretrained(tmp_path / "package"))   # a difflab package of it
    args = inputs(case)
    assert torch.equal(copy(*args), model(*args))


# The published configs (values of their unet/config.json) at full size, on the meta device.
FULL = {
    "sd1": (dict(cross_attention_dim=768, attention_head_dim=8, sample_size=64), 859_520_964),
    "sd2": (dict(cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20], use_linear_projection=True,
                 upcast_attention=True, sample_size=96), 865_910_724),
    "sdxl": (dict(block_out_channels=[320, 640, 1280], cross_attention_dim=2048, attention_head_dim=[5, 10, 20],
                  transformer_layers_per_block=[1, 2, 10], use_linear_projection=True, sample_size=128,
                  down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                  up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                  addition_embed_type="text_time", addition_time_embed_dim=256,
                  projection_class_embeddings_input_dim=2816), 2_567_463_684),
}


# Names (and shapes) in the published single files that diffusers' converter does not pin down: it takes an
# upsampler at output_blocks.M.1 or .2 alike; CompVis puts it after the level's transformer, if any.
KNOWN_ORIGINAL = {
    "sd1": {"output_blocks.2.1.conv.weight": (1280, 1280, 3, 3), "output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
            "output_blocks.8.2.conv.weight": (640, 640, 3, 3), "input_blocks.3.0.op.weight": (320, 320, 3, 3),
            "input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
            "input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
            "middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 768), "out.2.weight": (4, 320, 3, 3)},
    "sd2": {"output_blocks.2.1.conv.weight": (1280, 1280, 3, 3), "output_blocks.8.2.conv.weight": (640, 640, 3, 3),
            "input_blocks.1.1.proj_in.weight": (320, 320), "time_embed.2.weight": (1280, 1280)},
    "sdxl": {"output_blocks.2.2.conv.weight": (1280, 1280, 3, 3), "output_blocks.5.2.conv.weight": (640, 640, 3, 3),
             "input_blocks.3.0.op.weight": (320, 320, 3, 3), "input_blocks.6.0.op.weight": (640, 640, 3, 3),
             "input_blocks.7.1.transformer_blocks.9.ff.net.2.weight": (1280, 5120),
             "label_emb.0.0.weight": (1280, 2816), "output_blocks.8.0.emb_layers.1.weight": (320, 1280)},
}


@pytest.mark.parametrize("family", sorted(FULL))
def test_full_size_maps_on_meta(family):
    config, parameters = FULL[family]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    cfg = SDUNetConfig.from_diffusers(dict(unet.config))
    assert cfg == dataclasses.replace(SD_UNET_CONFIGS[family], sample_size=config["sample_size"])
    state = unet.state_dict()
    assert sum(v.numel() for v in state.values()) == parameters
    original = original_from_diffusers_state(state, cfg)
    back = convert_ldm_unet_checkpoint(original, dict(unet.config))
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in state.items()}
    for key, shape in KNOWN_ORIGINAL[family].items():
        assert tuple(original[ORIGINAL_PREFIX + key].shape) == shape, key
    with torch.device("meta"):
        ours = SDUNet(config=cfg).state_dict()
    stripped = {k[len(ORIGINAL_PREFIX):]: v for k, v in original.items()}
    for layout, source in (("diffusers", state), ("original", stripped)):
        mapping = key_map(cfg, ours, layout)
        assert sorted(mapping) == sorted(source)
        assert all(source[k].shape == ours[mapping[k]].shape for k in mapping)


def _refusal(folder, tmp_path, edit) -> str:
    """Copy the folder with its weights edited by ``edit(state)``; the load's error message."""
    state = load_file(folder / "diffusion_pytorch_model.safetensors")
    edit(state)
    target = tmp_path / "edited"
    target.mkdir(parents=True)
    (target / "config.json").write_text((folder / "config.json").read_text())
    save_file(state, target / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError) as info:
        load_diffusers_unet(target)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_refusals_name_the_key(sd1, tmp_path):
    case, unet, folder = sd1
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    extra = _refusal(folder, tmp_path / "a", lambda s: s.update({"down_blocks.0.extra.weight": torch.ones(2)}))
    assert "'down_blocks.0.extra.weight'" in extra and "no place" in extra
    missing = _refusal(folder, tmp_path / "b", lambda s: s.pop(key))
    assert f"missing tensor '{key}'" in missing and "down.0.attn.0.blocks.0.cross_attn.to_k.weight" in missing
    shape = _refusal(folder, tmp_path / "c", lambda s: s.update({key: torch.ones(32, 16)}))
    assert f"'{key}' has shape [32, 16]" in shape and "[32, 32]" in shape


@pytest.mark.parametrize("edit, words", [
    ({"class_embed_type": "timestep"}, "class_embed_type='timestep' is not supported"),
    ({"time_cond_proj_dim": 256}, "time_cond_proj_dim=256 is not supported"),
    ({"addition_embed_type": "text_image"}, "addition_embed_type='text_image' is not supported"),
    ({"down_block_types": ["SimpleCrossAttnDownBlock2D"] * 3}, "down_block_types must be 3 of"),
    ({"attention_head_dim": [8, 8]}, "attention_head_dim must be a positive integer or 3 of them"),
    ({"center_input_sample": 0}, "center_input_sample=0 is not supported"),
    ({"brand_new_option": 1}, "unknown key(s) ['brand_new_option']"),
])
def test_unsupported_config_values_are_refused(edit, words):
    config = {**CASES["sd1"], "_class_name": "UNet2DConditionModel", **edit}
    with pytest.raises(ValueError) as info:
        SDUNetConfig.from_diffusers(json.loads(json.dumps(config)))
    assert words in str(info.value) and "\n" not in str(info.value)


def test_pickle_weights_and_wrong_inputs_are_refused(sdxl, tmp_path):
    case, unet, folder = sdxl
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"not opened")
    with pytest.raises(ValueError, match="only safetensors"):
        load_diffusers_unet(tmp_path)
    model = load_diffusers_unet(folder)
    x, t, context, pooled, time_ids = inputs(case)
    with pytest.raises(ValueError, match="needs pooled"):
        model(x, t, context)
    with pytest.raises(ValueError, match="context"):
        model(x, t, None, pooled, time_ids)
    with pytest.raises(ValueError, match="multiples of 2"):
        model(x[..., :15], t, context, pooled, time_ids)
