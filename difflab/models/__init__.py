"""difflab's networks: UNet, DiT, AutoencoderKL, text encoders, and model packages.

All networks are PyTorch modules written here and share one call convention,
``model(x_t, t, context=None, context_mask=None, class_labels=None, pooled=None) -> prediction``
(the VAE: ``encode(x) -> posterior``, ``decode(z)``); :func:`create_model` builds any registered class
by name from its config fields (:mod:`difflab.models.base`). ``save_pretrained(folder, metadata=None)``
writes a package (format in :mod:`difflab.models.package`); :func:`load` / :func:`load_package`
read one back strictly. Text encoders return ``(tokens [B, L, D], mask [B, L], pooled [B, D])``.
"""

from difflab.models.base import BUILTIN_MODELS, MODEL_CLASSES, ModelMixin, create_model, model_class, register_model
from difflab.models.dit import DIT_SIZES, DiT, DiTConfig
from difflab.models.package import FORMAT_VERSION, ModelPackage, load, load_package
from difflab.models.text import ClassLabelEncoder, HFTextEncoder, MiniLM, TextEncoder, text_encoder_from_spec
from difflab.models.unet import UNet, UNetConfig
from difflab.models.vae import AutoencoderKL, AutoencoderKLConfig, DiagonalGaussian

__all__ = ["UNet", "UNetConfig", "DiT", "DiTConfig", "DIT_SIZES", "AutoencoderKL", "AutoencoderKLConfig",
           "DiagonalGaussian", "TextEncoder", "MiniLM", "HFTextEncoder", "ClassLabelEncoder",
           "text_encoder_from_spec", "load", "load_package", "ModelPackage", "register_model", "MODEL_CLASSES",
           "FORMAT_VERSION", "ModelMixin", "create_model", "model_class", "BUILTIN_MODELS"]
