"""difflab's networks: UNet, DiT, AutoencoderKL, text encoders, and model packages.

All networks are PyTorch modules written here and share one call convention,
``model(x_t, t, context=None, context_mask=None, class_labels=None, pooled=None) -> prediction``
(the VAE: ``encode(x) -> posterior``, ``decode(z)``). ``save_pretrained(folder, metadata=None)``
writes a package (format in :mod:`difflab.models.package`); :func:`load` / :func:`load_package`
read one back strictly. Text encoders return ``(tokens [B, L, D], mask [B, L], pooled [B, D])``.
"""

from difflab.models.dit import DIT_SIZES, DiT, DiTConfig
from difflab.models.package import FORMAT_VERSION, MODEL_CLASSES, ModelPackage, load, load_package, register_model
from difflab.models.text import ClassLabelEncoder, HFTextEncoder, MiniLM, TextEncoder, text_encoder_from_spec
from difflab.models.unet import UNet, UNetConfig
from difflab.models.vae import AutoencoderKL, AutoencoderKLConfig, DiagonalGaussian

__all__ = ["UNet", "UNetConfig", "DiT", "DiTConfig", "DIT_SIZES", "AutoencoderKL", "AutoencoderKLConfig",
           "DiagonalGaussian", "TextEncoder", "MiniLM", "HFTextEncoder", "ClassLabelEncoder",
           "text_encoder_from_spec", "load", "load_package", "ModelPackage", "register_model", "MODEL_CLASSES",
           "FORMAT_VERSION"]
