"""An IP-Adapter file in the official layout (h94/IP-Adapter's ``models/ip-adapter_sd15.safetensors`` beside
``models/image_encoder/``) steers difflab's Stable Diffusion 1.x pipeline as diffusers' ``load_ip_adapter``
steers its own: a tiny random SD 1.x folder, a tiny random CLIP image encoder saved with its
CLIPImageProcessor, a random adapter whose layer numbers are read from diffusers' ``attn_processors``; the
same prompt, image prompt, initial latents and sampler on both sides, the same images (and the same CLIP
embedding and UNet prediction; an SDXL file too). Files that do not fit are refused with one line. Nothing
is downloaded."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import save_file

import difflab
from difflab.convert.diffusers_unet import module_table
from difflab.convert.ip_adapter_files import attention_numbers, ip_adapter_from_state
from difflab.models.ip_adapter import attached, layer_spec
from difflab.models.sd_unet import SD_UNET_CONFIGS, SDUNet
from test_controlnet_sd import as_array, control_image, unit_eps
from test_convert_sd_pipeline import PROMPT, tiny_sd_folder, tiny_sdxl_folder

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers
FEATURES, TOKENS = 24, 4
IMAGE = control_image((40, 48))     # not square: the processor's resize and centre crop matter
FILE = "ip-adapter_sd15.safetensors"


def tiny_image_encoder(folder, projection_dim: int = FEATURES):
    """A random CLIPVisionModelWithProjection and a CLIPImageProcessor unlike the default at its image
    size (shortest side 40, crop 32), both saved to ``folder``."""
    torch.manual_seed(3)
    config = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=32, patch_size=8,
                                           projection_dim=projection_dim)
    encoder = transformers.CLIPVisionModelWithProjection(config).eval()
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 40}, crop_size=32)
    encoder.save_pretrained(folder)
    processor.save_pretrained(folder)
    return encoder, processor


def official_state(unet, seed: int = 4) -> dict[str, torch.Tensor]:
    """A random IP-Adapter for diffusers' ``unet`` in the official layout: ``ip_adapter.{N}`` numbers
    ``unet.attn_processors``, and only the cross-attentions (``attn2``) have weights."""
    generator = torch.Generator().manual_seed(seed)
    random = lambda *shape: torch.randn(*shape, generator=generator) * 0.3
    width = unet.config.cross_attention_dim
    state = {"image_proj.proj.weight": random(TOKENS * width, FEATURES), "image_proj.proj.bias": random(TOKENS * width),
             "image_proj.norm.weight": 1 + random(width), "image_proj.norm.bias": random(width)}
    for n, name in enumerate(unet.attn_processors):
        if name.endswith("attn2.processor"):
            shape = unet.get_submodule(name.removesuffix(".processor")).to_k.weight.shape   # [C, D]
            state[f"ip_adapter.{n}.to_k_ip.weight"] = random(*shape)
            state[f"ip_adapter.{n}.to_v_ip.weight"] = 5 * random(*shape)     # an image branch that shows
    return state


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    root = tmp_path_factory.mktemp("ip_sd")
    folder, reference = tiny_sd_folder(root)
    unit_eps(folder, reference)
    models = root / "IP-Adapter" / "models"
    encoder, processor = tiny_image_encoder(models / "image_encoder")
    state = official_state(reference.unet)
    save_file(state, models / FILE)
    steered = diffusers.StableDiffusionPipeline(**{**reference.components, "image_encoder": encoder,
                                                   "feature_extractor": processor})
    steered.load_ip_adapter(str(models), subfolder="", weight_name=FILE, local_files_only=True)
    steered.set_progress_bar_config(disable=True)
    return folder, models, steered, state


@pytest.mark.parametrize("scale,guidance", [(1.0, 7.5), (0.6, 3.0), (1.0, 1.0)])
def test_official_ip_adapter_images_equal_diffusers(sd, scale, guidance):
    folder, models, reference, _ = sd
    pipe = difflab.Pipeline.from_pretrained(folder).load_ip_adapter(models / FILE)   # image_encoder/ beside it
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    run = dict(steps=4, guidance_scale=guidance, latents=latents)
    reference.set_ip_adapter_scale(scale)
    expected = reference(PROMPT, ip_adapter_image=IMAGE, num_inference_steps=4, guidance_scale=guidance,
                         latents=latents.clone(), output_type="np").images                      # [1, 16, 16, 3]
    steered = pipe(PROMPT, ip_image=IMAGE, ip_scale=scale, **run)
    ours = as_array(steered.images)
    assert np.abs(ours - expected).max() <= 1 / 255, np.abs(ours - expected).max()
    plain = as_array(pipe(PROMPT, **run).images)
    assert np.abs(ours - plain).mean() > 1 / 255 and np.abs(ours - plain).max() > 4 / 255   # the image prompt acts
    assert np.array_equal(as_array(pipe(PROMPT, ip_image=IMAGE, ip_scale=0.0, **run).images), plain)
    reference.set_ip_adapter_scale(0.0)
    unsteered = reference(PROMPT, ip_adapter_image=IMAGE, num_inference_steps=4, guidance_scale=guidance,
                          latents=latents.clone(), output_type="np").images
    assert np.abs(plain - unsteered).max() <= 1 / 255
    assert steered.recipes[0]["ip_adapter"]["name"] == "ip-adapter_sd15"


def test_features_and_prediction_equal_diffusers(sd):
    """The CLIP embedding of the image prompt, and the UNet's prediction with the adapter attached, as
    diffusers computes them (its encode_image; its UNet with the IP-Adapter's attention processors)."""
    folder, models, reference, _ = sd
    pipe = difflab.Pipeline.from_pretrained(folder).load_ip_adapter(models / FILE)
    _, adapter, encoder, _ = pipe.ip_adapter
    embeds, _ = reference.encode_image(IMAGE, "cpu", 1)                       # image_embeds [1, FEATURES]
    features = encoder(IMAGE)
    assert features.shape == (1, FEATURES) and torch.allclose(features, embeds, atol=1e-6)
    torch.manual_seed(5)
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([700.0, 30.0]), torch.randn(2, 5, 32)
    reference.set_ip_adapter_scale(0.6)
    unet, tokens = pipe.model.unet, adapter.image_tokens(features.expand(2, -1))
    with torch.no_grad():
        image_embeds = [embeds[:, None].expand(2, 1, -1)]                     # [B, images, FEATURES] per adapter
        expected = reference.unet(x, t, context, added_cond_kwargs={"image_embeds": image_embeds}).sample
        plain = unet(x, t, context)
        with attached(unet, adapter, tokens, scale=0.6):
            ours = unet(x, t, context)
    assert (ours - expected).abs().max() < 1e-5 and (ours - plain).abs().max() > 0.1


def test_the_layers_follow_diffusers_numbering(sd):
    folder, models, _, state = sd
    pipe = difflab.Pipeline.from_pretrained(folder)
    pipe.load_ip_adapter(models / FILE, image_encoder=models / "image_encoder")
    unet, adapter = pipe.model.unet, pipe.ip_adapter[1]
    numbers = dict(zip((name for name, _ in layer_spec(unet)), attention_numbers(unet)))
    assert numbers == {"down.0.attn.0.blocks.0.cross_attn": 1, "up.1.attn.0.blocks.0.cross_attn": 3,
                       "up.1.attn.1.blocks.0.cross_attn": 5, "mid_attn.blocks.0.cross_attn": 7}
    mid = [name for name, _ in adapter.config.layers].index("mid_attn.blocks.0.cross_attn")
    assert torch.equal(adapter.to_kv_ip[mid].weight, torch.cat([state["ip_adapter.7.to_k_ip.weight"],
                                                                 state["ip_adapter.7.to_v_ip.weight"]]))
    assert adapter.config.num_tokens == TOKENS and pipe.ip_adapter[2].feature_dim == FEATURES
    nested = {part: {k[len(part) + 1:]: v for k, v in state.items() if k.startswith(part + ".")}
              for part in ("image_proj", "ip_adapter")}                   # the .bin's layout, once loaded
    assert all(torch.equal(a, b) for a, b in zip(ip_adapter_from_state(nested, unet).state_dict().values(),
                                                 adapter.state_dict().values()))


@pytest.mark.parametrize("family,layers", [("sd1", 16), ("sdxl", 70)])
def test_the_published_unets_are_numbered_as_diffusers_numbers_them(family, layers):
    """Built on the meta device: each adapted layer's N names, in diffusers' attn_processors, the
    processor of the same attention (through the UNet key table)."""
    sdxl = dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048)
    with torch.device("meta"):
        ours = SDUNet(config=SD_UNET_CONFIGS[family])
        theirs = diffusers.UNet2DConditionModel(**(sdxl if family == "sdxl" else {}))
    processors, table = list(theirs.attn_processors), module_table(ours.config)
    numbers = dict(zip((name for name, _ in layer_spec(ours)), attention_numbers(ours)))
    assert sorted(numbers.values()) == list(range(1, 2 * layers, 2))
    for name, n in numbers.items():
        assert processors[n] == table[f"{name}.to_q"][0].replace(".to_q", ".processor")


def test_an_sdxl_ip_adapter_file_equals_diffusers_too(tmp_path):
    folder, reference = tiny_sdxl_folder(tmp_path)
    unit_eps(folder, reference)
    models = tmp_path / "sdxl_models"
    encoder, processor = tiny_image_encoder(models / "image_encoder")
    save_file(official_state(reference.unet), models / "ip-adapter_sdxl.safetensors")
    steered = diffusers.StableDiffusionXLPipeline(**{**reference.components, "image_encoder": encoder,
                                                     "feature_extractor": processor})
    steered.load_ip_adapter(str(models), subfolder="", weight_name="ip-adapter_sdxl.safetensors", local_files_only=True)
    steered.set_progress_bar_config(disable=True)
    pipe = difflab.Pipeline.from_pretrained(folder).load_ip_adapter(models / "ip-adapter_sdxl.safetensors")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    expected = steered(PROMPT, ip_adapter_image=IMAGE, num_inference_steps=4, guidance_scale=5.0,
                       latents=latents.clone(), output_type="np").images
    ours = as_array(pipe(PROMPT, ip_image=IMAGE, steps=4, guidance_scale=5.0, latents=latents).images)
    assert np.abs(ours - expected).max() <= 1 / 255, np.abs(ours - expected).max()
    plain = as_array(pipe(PROMPT, steps=4, guidance_scale=5.0, latents=latents).images)
    assert np.abs(ours - plain).mean() > 2 / 255


def edited(state, drop=(), **replace):
    return {k: v for k, v in state.items() if k not in drop} | {k.replace("__", "."): v for k, v in replace.items()}


def test_files_that_do_not_fit_are_refused(sd, tmp_path):
    folder, models, reference, state = sd
    unet = difflab.Pipeline.from_pretrained(folder).model.unet
    sdxl_like = {f"ip_adapter.{n}.{kv}.weight": torch.zeros(64, 32)
                 for n in range(9, 140, 2) for kv in ("to_k_ip", "to_v_ip")}
    cases = [
        (edited(state, drop=("ip_adapter.5.to_k_ip.weight", "ip_adapter.5.to_v_ip.weight")),
         r"adapts 3 cross-attention layers, this UNet has 4 \(ip_adapter.1, 3, .., 7\); ip_adapter.5 is missing"),
        (state | sdxl_like, r"adapts 70 cross-attention layers, this UNet has 4 .*ip_adapter.9 has no place"),
        (edited(state, ip_adapter__3__to_k_ip__weight=torch.zeros(32, 48)),
         r"tensor 'ip_adapter.3.to_k_ip.weight' has shape \[32, 48\], but IPAdapter's 'to_kv_ip.2.weight' needs "
         r"\[32, 32\]"),
        (edited(state, image_proj__proj__weight=torch.zeros(4 * 20, FEATURES)),
         r"image_proj.proj.weight has shape \[80, 24\]; it needs \[tokens x 32, feature_dim\]"),
        (edited(state, image_proj__latents=torch.zeros(1, 16, 32)), r"IP-Adapter Plus .* is not supported"),
        (edited(state, ip_adapter__1__to_k_lora__down__weight=torch.zeros(4, 32)),
         r"'ip_adapter.1.to_k_lora.down.weight' is not a to_k_ip / to_v_ip weight"),
        (edited(state, drop=("ip_adapter.7.to_v_ip.weight",)), r"missing tensor 'ip_adapter.7.to_v_ip.weight'"),
    ]
    pipe = difflab.Pipeline.from_pretrained(folder)
    for tensors, message in cases:
        with pytest.raises(ValueError, match=message):
            ip_adapter_from_state(tensors, unet)
        save_file(tensors, tmp_path / FILE)
        with pytest.raises(ValueError, match=message):
            pipe.load_ip_adapter(tmp_path / FILE, image_encoder=models / "image_encoder")
    assert pipe.ip_adapter is None
    torch.save({"image_proj": {}, "ip_adapter": {}}, tmp_path / "ip-adapter_sd15.bin")
    with pytest.raises(ValueError, match="only safetensors IP-Adapter files are loaded"):
        pipe.load_ip_adapter(tmp_path / "ip-adapter_sd15.bin")
    tiny_image_encoder(tmp_path / "wide", projection_dim=16)
    with pytest.raises(ValueError, match="gives 16-wide embeddings; ip-adapter_sd15.safetensors reads 24"):
        pipe.load_ip_adapter(models / FILE, image_encoder=tmp_path / "wide")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        pipe.load_ip_adapter(models / FILE, image_encoder=tmp_path)
    with pytest.raises(ValueError, match="for Stable Diffusion; this pipeline's network is a UNet"):
        difflab.Pipeline.from_pretrained("shapes").load_ip_adapter(models / FILE)


def test_the_cli_takes_a_package_a_bundled_name_or_an_official_file(tmp_path):
    from PIL import Image

    from difflab.cli_checks import check_ip_flags
    image = tmp_path / "ref.png"
    Image.new("RGB", (8, 8)).save(image)
    official = tmp_path / "ip-adapter_sd15.safetensors"
    official.write_bytes(b"")                               # only the name is checked here; loading reads it
    for adapter in ("shapes-ip", str(tmp_path), str(official)):
        assert check_ip_flags(adapter, str(image), 0.5)["ip_scale"] == 0.5
    pickle = tmp_path / "ip-adapter_sd15.bin"
    pickle.write_bytes(b"")
    for adapter in (str(pickle), "nowhere", "shapes-nope"):
        with pytest.raises(ValueError, match="--ip-adapter"):
            check_ip_flags(adapter, str(image), 0.5)
