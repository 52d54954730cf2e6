"""The pipeline's IP-Adapter methods (Ye et al. 2023; the network: :mod:`difflab.models.ip_adapter`).

    pipe = Pipeline.from_pretrained("shapes", ip_adapter="runs/ip/model")
    pipe("", ip_image="reference.png")                          # the image alone as the prompt
    pipe("a small circle in the top left", ip_image=ref, ip_scale=0.8)   # text and image together

    sd = Pipeline.from_pretrained("stable-diffusion-v1-5")      # a diffusers SD 1.x folder
    sd.load_ip_adapter("IP-Adapter/models/ip-adapter_sd15.safetensors")  # + models/image_encoder/ beside it
    sd("a dog on the beach", ip_image="style.png", ip_scale=0.6)

The image prompt is encoded by the adapter's image encoder (for difflab's own models, one of the
shapes encoders of :mod:`difflab.models.image_encoders`; for the official Stable Diffusion files, a
CLIP vision model from a local folder) into ``num_tokens`` context tokens that every adapted
cross-attention layer attends to beside the text (decoupled cross-attention). Under classifier-free
guidance the unconditional half gets the tokens of a zero image feature, as the adapter was trained
to read a dropped image (and as diffusers does). The recipe records the adapter's weights, the scale
and the image's hash; a replay needs the image again.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

IP_SCALE_RANGE = (0.0, 5.0)
DEFAULT_IP_SCALE = 1.0   # lambda of eq. 5 where neither the call nor the adapter package names one


class ImagePromptMethods:
    """Mixed into :class:`~difflab.Pipeline`; it keeps its adapter in ``self.ip_adapter``
    (``(name, IPAdapter, image encoder, weights hash)`` or None) and the scale a call without ``ip_scale``
    uses in ``self.ip_scale_default``: the package's measured ``ip_adapter.scale``, else 1."""

    ip_scale_default = DEFAULT_IP_SCALE

    def load_ip_adapter(self, folder, image_encoder=None) -> "ImagePromptMethods":
        """Load an IP-Adapter package trained for this pipeline's network (``difflab train --ip-adapter``),
        or an official IP-Adapter file (Ye et al. 2023) on a Stable Diffusion pipeline: h94/IP-Adapter's
        ``models/ip-adapter_sd15.safetensors`` (:mod:`difflab.convert.ip_adapter_files`) with its CLIP image
        encoder, a local transformers folder: ``image_encoder=FOLDER``, by default the ``image_encoder/``
        beside the file (h94's layout: ``models/ip-adapter_sd15.safetensors`` + ``models/image_encoder/``)."""
        from difflab.models.image_encoders import image_encoder as named_encoder
        from difflab.models.ip_adapter import IPAdapter
        from difflab.models.package import load_package
        from difflab.pipelines.recipes import weights_hash
        from difflab.settings import package_folder

        if isinstance(folder, (str, os.PathLike)) and Path(folder).expanduser().is_file():
            return self._load_ip_adapter_file(Path(folder).expanduser(), image_encoder)
        if image_encoder is not None:
            raise ValueError("image_encoder= is for official IP-Adapter files (.safetensors); a difflab IP-Adapter "
                             "package names its own encoder")
        folder = package_folder(folder)
        package = load_package(folder)
        adapter, scale = package.model, package_scale(package.metadata, folder)
        if not isinstance(adapter, IPAdapter):
            raise ValueError(f"{folder} holds a {type(adapter).__name__}, not an IP-Adapter (a package made by "
                             "difflab train --ip-adapter)")
        if not adapter.steers(self._ip_network()):
            raise ValueError(f"the IP-Adapter in {folder} was trained for another network than this pipeline's")
        encoder = named_encoder(adapter.config.image_encoder, grid=adapter.config.grid)
        self.ip_adapter = (folder.name, adapter.to(self.device, self.dtype), encoder.to(self.device),
                           weights_hash(folder))
        self.ip_scale_default = scale
        return self

    def _load_ip_adapter_file(self, path: Path, image_encoder) -> "ImagePromptMethods":
        """An official IP-Adapter file and its CLIP image encoder's folder; the file is checked first."""
        from difflab.convert.ip_adapter_files import load_ip_adapter_file
        from difflab.convert.keymap import weights_hash
        from difflab.models.image_encoders import CLIPVisionEncoder
        from difflab.models.sd_unet import SDUNet

        unet = self._ip_network()
        if type(unet) is not SDUNet:
            raise ValueError(f"{path} is an IP-Adapter file for Stable Diffusion; this pipeline's network is a "
                             f"{type(unet).__name__}")
        adapter = load_ip_adapter_file(path, unet)
        encoder_folder = path.parent / "image_encoder" if image_encoder is None else Path(image_encoder).expanduser()
        encoder = CLIPVisionEncoder(encoder_folder)
        if encoder.feature_dim != adapter.config.feature_dim:
            raise ValueError(f"the image encoder in {encoder_folder} gives {encoder.feature_dim}-wide embeddings; "
                             f"{path.name} reads {adapter.config.feature_dim} (pass the encoder it was trained with)")
        weights = f"{weights_hash(path)}+{weights_hash(encoder_folder)}"        # the adapter and its encoder
        self.ip_adapter = (path.stem, adapter.to(self.device, self.dtype), encoder.to(self.device), weights)
        self.ip_scale_default = DEFAULT_IP_SCALE
        return self

    def _ip_network(self):
        """The UNet an IP-Adapter attaches to: a Stable Diffusion pipeline's SDUNet sits inside the
        adapter of its keywords (:class:`~difflab.convert.diffusers_folder.SDKeywords`)."""
        from difflab.convert.diffusers_folder import SDKeywords
        return self.model.unet if isinstance(self.model, SDKeywords) else self.model

    def unload_ip_adapter(self) -> "ImagePromptMethods":
        self.ip_adapter, self.ip_scale_default = None, DEFAULT_IP_SCALE
        return self

    def _ip_tokens(self, ip_image, ip_scale, n_images: int, guided: bool):
        """The image tokens of one call (``[B]``, or ``[2B]`` = conditional then unconditional under
        guidance), or None without an image prompt; every argument checked first."""
        if ip_image is None:
            return None
        if self.ip_adapter is None:
            raise ValueError("ip_image needs an IP-Adapter: Pipeline.from_pretrained(..., ip_adapter=PATH) "
                             "or pipe.load_ip_adapter(PATH)")
        if not is_ip_scale(ip_scale):
            raise ValueError(f"ip_scale must be a number in {list(IP_SCALE_RANGE)}, got {ip_scale!r}")
        images = list(ip_image) if isinstance(ip_image, (list, tuple)) else [ip_image]
        if len(images) not in (1, n_images):
            raise ValueError(f"ip_image: give one image, or one per output image ({n_images}), got {len(images)}")
        from difflab.pipelines.control import open_image
        _, adapter, encoder, _ = self.ip_adapter
        with torch.no_grad():
            features = encoder([open_image(im, "ip_image") for im in images]).to(self.device)
            features = features.expand(n_images, *features.shape[1:]) if len(images) == 1 else features
            if guided:
                features = torch.cat([features, torch.zeros_like(features)])
            return adapter.image_tokens(features).to(self.dtype)

    def _ip_attached(self, tokens, ip_scale):
        """A context in which the network reads ``tokens`` (nothing without them)."""
        if tokens is None:
            return contextlib.nullcontext()
        from difflab.models.ip_adapter import attached
        return attached(self._ip_network(), self.ip_adapter[1], tokens, float(ip_scale))

    def _ip_recipe(self, tokens, ip_image, ip_scale, index: int) -> dict:
        if tokens is None:
            return {}
        from difflab.pipelines.control import open_image
        from difflab.pipelines.edit import image_hash
        images = list(ip_image) if isinstance(ip_image, (list, tuple)) else [ip_image]
        image = images[index if len(images) > 1 else 0]
        name, _, _, weights = self.ip_adapter
        return {"ip_adapter": {"name": name, "weights": weights, "scale": float(ip_scale),
                               "image": image_hash(open_image(image, "ip_image"))}}

    def _replay_ip(self, recipe: dict, ip_image) -> dict:
        """The image-prompt arguments of a recipe's replay; the same adapter and image are required."""
        from difflab.pipelines.control import open_image
        from difflab.pipelines.edit import image_hash
        wanted = recipe.get("ip_adapter")
        if not wanted:
            return {}
        if self.ip_adapter is None or self.ip_adapter[3] != wanted.get("weights"):
            raise ValueError(f"this recipe was made with the IP-Adapter {wanted.get('name')!r}: load the same one")
        if ip_image is None:
            raise ValueError("this recipe was made with an image prompt: pass it again (ip_image=)")
        if image_hash(open_image(ip_image, "ip_image")) != wanted.get("image"):
            raise ValueError("ip_image differs from the one the recipe was made with")
        return {"ip_image": ip_image, "ip_scale": wanted["scale"]}


def package_scale(metadata: dict, folder) -> float:
    """An IP-Adapter package's default ``ip_scale``: its config's ``ip_adapter.scale`` (the scale its model
    card measured best), else 1; one out of :data:`IP_SCALE_RANGE` is refused."""
    section = metadata.get("ip_adapter")
    scale = section.get("scale", DEFAULT_IP_SCALE) if isinstance(section, dict) else DEFAULT_IP_SCALE
    if not is_ip_scale(scale):
        raise ValueError(f"{folder}/config.json: ip_adapter.scale must be a number in {list(IP_SCALE_RANGE)}, "
                         f"got {scale!r}")
    return float(scale)


def is_ip_scale(value) -> bool:
    """Whether ``value`` is a number (not a bool) in :data:`IP_SCALE_RANGE`."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and IP_SCALE_RANGE[0] <= value <= IP_SCALE_RANGE[1])
