"""A diffusers pipeline folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``) as a difflab :class:`~difflab.pipelines.Pipeline`, with difflab's own
networks (:mod:`difflab.convert.diffusers_unet`, :mod:`difflab.convert.diffusers_vae`), schedule and
samplers (:mod:`difflab.convert.diffusers_scheduler`); only the text encoders are transformers'
models, read from the folder with ``local_files_only``. Nothing is downloaded.

Stable Diffusion 1.x and 2.x (``StableDiffusionPipeline``; epsilon or v-prediction), SDXL
(``StableDiffusionXLPipeline``: two text encoders, pooled text and size conditioning) and SD3
(``StableDiffusion3Pipeline``: MMDiT, CLIP-L + CLIP-G + optional T5, flow matching;
:mod:`difflab.convert.diffusers_sd3`) load today; FLUX folders are recognised and refused with one
line until its network lands.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from difflab.convert.keymap import read_json_object, weights_hash

FAMILIES = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl",
            "StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux"}
LOADABLE = ("sd", "sdxl", "sd3")
SD_DEFAULTS = {"steps": 30, "guidance_scale": 7.5}   # diffusers' guidance default (its 50 steps -> 30 with deis-class samplers)
SDXL_DEFAULTS = {"steps": 30, "guidance_scale": 5.0}


def is_diffusers_folder(folder) -> bool:
    return (Path(folder) / "model_index.json").is_file()


def family_of(folder: Path) -> str:
    """The pipeline family named by ``model_index.json`` (one line if it is not one difflab knows)."""
    name = read_json_object(folder / "model_index.json").get("_class_name")
    if name not in FAMILIES:
        raise ValueError(f"{folder / 'model_index.json'}: pipeline {name!r} is not one difflab loads; "
                         f"known: {', '.join(FAMILIES)}")
    family = FAMILIES[name]
    if family not in LOADABLE:
        raise ValueError(f"{folder}: {name} folders are recognised but not loadable yet (difflab loads "
                         f"{', '.join(k for k, v in FAMILIES.items() if v in LOADABLE)} today)")
    return family


class SDKeywords(nn.Module):
    """Base of the adapters below, from the conditioner's keywords (context, context_mask, pooled) to an
    SD network's: the UNet (its ``control_residuals`` pass through) or an SDControlNet steering it
    (made with :meth:`around`; its control image follows ``t``)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    @property
    def size_multiple(self) -> int:
        return self.unet.size_multiple

    @property
    def hint_stride(self) -> int:
        """The wrapped SDControlNet's."""
        return self.unet.hint_stride


class CrossAttentionOnly(SDKeywords):
    """SD 1.x/2.x UNets read the prompt's token states only: every position, no mask, no pooled
    vector. Adapts the conditioner's keywords to the network's."""

    def around(self, network: nn.Module) -> "CrossAttentionOnly":
        """This adaptation for another network of the same UNet (an SDControlNet)."""
        return CrossAttentionOnly(network)

    def forward(self, x, t, *control, context=None, context_mask=None, pooled=None, **residuals):
        return self.unet(x, t, *control, context=context, **residuals)


class SizeConditioned(SDKeywords):
    """SDXL's UNet with its micro-conditioning (Podell et al. 2023, Sec. 2.2): pooled text plus the
    original size, crop offset and target size, here the output's own size with no crop (diffusers'
    defaults), ``[H, W, 0, 0, H, W]`` in pixels."""

    def __init__(self, unet: nn.Module, downsampling: int):
        super().__init__(unet)
        self.downsampling = downsampling

    def around(self, network: nn.Module) -> "SizeConditioned":
        """This adaptation for another network of the same UNet (an SDControlNet)."""
        return SizeConditioned(network, self.downsampling)

    def forward(self, x, t, *control, context=None, context_mask=None, pooled=None, **residuals):
        height, width = (side * self.downsampling for side in x.shape[-2:])
        time_ids = x.new_tensor([height, width, 0, 0, height, width]).expand(x.shape[0], 6)       # [B, 6]
        return self.unet(x, t, *control, context=context, pooled=pooled, time_ids=time_ids, **residuals)


def load_diffusers(folder) -> dict:
    """The parts of a Stable Diffusion 1.x/2.x or SDXL folder as the Pipeline's keyword arguments."""
    from difflab.codecs import VAECodec
    from difflab.conditioning import Conditioner
    from difflab.convert.diffusers_scheduler import from_scheduler_config
    from difflab.convert.diffusers_unet import load_diffusers_unet
    from difflab.convert.diffusers_vae import load_diffusers_vae

    folder = Path(folder)
    family = family_of(folder)
    if family == "sd3":
        from difflab.convert.diffusers_sd3 import load_sd3
        return load_sd3(folder)
    parts = ("unet", "vae", "text_encoder", "tokenizer", "scheduler") + (("text_encoder_2", "tokenizer_2")
                                                                           if family == "sdxl" else ())
    for part in parts:
        if not (folder / part).is_dir():
            raise FileNotFoundError(f"{folder} has no {part}/ folder, which a {family.upper()} folder needs")
    scheduler = from_scheduler_config(read_json_object(folder / "scheduler" / "scheduler_config.json"),
                                      folder / "scheduler" / "scheduler_config.json")
    unet = load_diffusers_unet(folder / "unet").eval().requires_grad_(False)
    codec = VAECodec(load_diffusers_vae(folder / "vae").eval().requires_grad_(False))
    encoder, model = _text_and_model(folder, family, unet, codec.downsampling)
    sample_size = read_json_object(folder / "unet" / "config.json").get("sample_size", 64)
    defaults = {**(SDXL_DEFAULTS if family == "sdxl" else SD_DEFAULTS), "sampler": scheduler["sampler"],
                "spacing": scheduler["spacing"]}
    return {"model": model, "schedule": scheduler["schedule"], "prediction_type": scheduler["prediction_type"],
            "conditioner": Conditioner(encoder), "codec": codec, "resolution": int(sample_size) * codec.downsampling,
            "name": folder.name, "weights": weights_hash(folder / "unet"), "defaults": defaults, "folder": folder}


def _text_and_model(folder: Path, family: str, unet: nn.Module, downsampling: int):
    from difflab.models.text import CLIPPromptEncoder, DualCLIPEncoder
    if family == "sd":
        return CLIPPromptEncoder(folder / "text_encoder", folder / "tokenizer"), CrossAttentionOnly(unet)
    zero_empty = bool(read_json_object(folder / "model_index.json").get("force_zeros_for_empty_prompt", True))
    encoder = DualCLIPEncoder(CLIPPromptEncoder(folder / "text_encoder", folder / "tokenizer", hidden_layer=-2),
                              CLIPPromptEncoder(folder / "text_encoder_2", folder / "tokenizer_2", hidden_layer=-2),
                              zero_empty=zero_empty)
    return encoder, SizeConditioned(unet, downsampling)
