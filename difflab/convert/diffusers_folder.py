"""A diffusers pipeline folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``) as a difflab :class:`~difflab.pipelines.Pipeline`, with difflab's own
networks (:mod:`difflab.convert.diffusers_unet`, :mod:`difflab.convert.diffusers_vae`), schedule and
samplers (:mod:`difflab.convert.diffusers_scheduler`); only the text encoders are transformers'
models, read from the folder with ``local_files_only``. Nothing is downloaded.

Stable Diffusion 1.x and 2.x (``StableDiffusionPipeline``; epsilon or v-prediction) load today;
SDXL, SD3 and FLUX folders are recognised and refused with one line until their parts land.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from difflab.convert.keymap import read_json_object

FAMILIES = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl",
            "StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux"}
LOADABLE = ("sd",)
SD_DEFAULTS = {"steps": 30, "guidance_scale": 7.5}   # what diffusers' StableDiffusionPipeline uses (50 steps there)


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


class CrossAttentionOnly(nn.Module):
    """SD 1.x/2.x UNets read the prompt's token states only: every position, no mask, no pooled
    vector. Adapts the conditioner's keywords to the network's."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    @property
    def size_multiple(self) -> int:
        return self.unet.size_multiple

    def forward(self, x, t, context=None, context_mask=None, pooled=None):
        return self.unet(x, t, context=context)


def load_stable_diffusion(folder) -> dict:
    """The parts of a Stable Diffusion 1.x/2.x folder as the Pipeline's keyword arguments."""
    from difflab.codecs import VAECodec
    from difflab.conditioning import Conditioner
    from difflab.convert.diffusers_scheduler import from_scheduler_config
    from difflab.convert.diffusers_unet import load_diffusers_unet
    from difflab.convert.diffusers_vae import load_diffusers_vae
    from difflab.models.text import CLIPPromptEncoder

    folder = Path(folder)
    family_of(folder)
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if not (folder / part).is_dir():
            raise FileNotFoundError(f"{folder} has no {part}/ folder, which a Stable Diffusion folder needs")
    scheduler = from_scheduler_config(read_json_object(folder / "scheduler" / "scheduler_config.json"),
                                      folder / "scheduler" / "scheduler_config.json")
    unet = load_diffusers_unet(folder / "unet").eval().requires_grad_(False)
    vae = load_diffusers_vae(folder / "vae").eval().requires_grad_(False)
    encoder = CLIPPromptEncoder(folder / "text_encoder", folder / "tokenizer")
    codec = VAECodec(vae)
    sample_size = read_json_object(folder / "unet" / "config.json").get("sample_size", 64)
    defaults = {**SD_DEFAULTS, "sampler": scheduler["sampler"], "spacing": scheduler["spacing"]}
    return {"model": CrossAttentionOnly(unet), "schedule": scheduler["schedule"],
            "prediction_type": scheduler["prediction_type"], "conditioner": Conditioner(encoder), "codec": codec,
            "resolution": int(sample_size) * codec.downsampling, "name": folder.name,
            "weights": unet_hash(folder / "unet"), "defaults": defaults, "folder": folder}


def unet_hash(unet_folder: Path) -> str:
    """The recipes' weights id of a diffusers folder: sha256 of the UNet file's header and size (a
    full read of a multi-GB file at every load would cost seconds)."""
    import hashlib
    files = sorted(unet_folder.glob("*.safetensors"))
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            digest.update(f.read(1 << 20))
        digest.update(str(path.stat().st_size).encode())
    return digest.hexdigest()[:16]

