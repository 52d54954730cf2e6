"""A single-file Stable Diffusion checkpoint (the ``.safetensors`` of A1111 and ComfyUI users, in the
original CompVis / Stability layout) as a difflab Pipeline, with no config file and nothing downloaded::

    pipe = difflab.Pipeline(**load_single_file("v1-5-pruned-emaonly.safetensors"))

**Family, from key patterns alone** (every file also holds its UNet under ``model.diffusion_model.``
and its autoencoder under ``first_stage_model.``)::

    SD 1.x  cond_stage_model.transformer.*                 OpenAI CLIP ViT-L/14 (transformers layout)
    SD 2.x  cond_stage_model.model.transformer.resblocks.*  OpenCLIP ViT-H/14
    SDXL    conditioner.embedders.0.transformer.*           CLIP ViT-L/14, and
            conditioner.embedders.1.model.*                 OpenCLIP ViT-bigG/14 (with text_projection);
            model.diffusion_model.label_emb.*               the UNet's size conditioning

SD 2.x saved by Stability's sgm code has its OpenCLIP tower under ``conditioner.embedders.0.model.``;
with a size-conditioned UNet (``label_emb``) that tower alone is the SDXL refiner, recognised and
refused. Any other key set is refused with one line listing the groups of tensors found.

**Sizes: shapes for everything, published constants for what shapes cannot tell.** The UNet's levels,
ResNet blocks per level, widths, which levels have transformers and how deep, the context width,
linear or convolutional projections, in/out channels and SDXL's add-embedding width (its size-id
features: (that width - the pooled text width) / 6) are read from tensor shapes; so are the
autoencoder's levels, blocks, widths, latent channels, middle attention and quant convs, and the
text towers' widths, depths, MLP widths and projection (:mod:`difflab.convert.original_clip`).
What no shape shows is the family's published value: UNet heads (SD 1.x: 8 per level; SD 2.x and
SDXL: width / 64), GroupNorm groups (32) and epsilons, time features, the autoencoder's scaling
factor (SD 1.x/2.x 0.18215, SDXL 0.13025), text heads (width / 64) and activations. A published
file therefore gets exactly :data:`~difflab.models.sd_unet.SD_UNET_CONFIGS` and
:data:`~difflab.models.vae.VAE_CONFIGS` (the tests derive them from the published configs' shapes),
and a small model built with the same constants loads as well.

**Prediction type: no key tells it.** ``prediction_type=`` decides; by default SD 1.x and SDXL are
``"epsilon"`` and SD 2.x is ``"v_prediction"`` (SD 2.0-v and 2.1 at 768 px, which most 2.x
fine-tunes start from): pass ``prediction_type="epsilon"`` for 2.0/2.1-base (512 px). A file carrying
ComfyUI's marker tensor ``v_pred`` is v-prediction; with ``ztsnr`` beside it the schedule is
rescaled to zero terminal SNR (Lin et al. 2024) and sampled on trailing timesteps. (ComfyUI also
guesses SD 2.x's type from a statistic of one trained bias; that says nothing about other weights,
so difflab does not.)

Every family shares the schedule (scaled-linear betas 0.00085 to 0.012, 1000 steps, offset 1); the
default sampler is Euler on leading timesteps (SDXL's published scheduler). Skipped by name: LDM's
schedule buffers (``betas``, ``alphas_cumprod``, ...), EMA copies (``model_ema.*``: A1111, ComfyUI and
diffusers load the weights under ``model.diffusion_model.``), sgm's ``denoiser.sigmas`` and the
markers above. Only ``.safetensors`` is read (pickle files are refused unopened, since loading one
can run code); a truncated file, a missing tensor or a wrong shape is one line naming it.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from safetensors import SafetensorError, safe_open

from difflab.convert.diffusers_folder import SD_DEFAULTS, SDXL_DEFAULTS, CrossAttentionOnly, SizeConditioned
from difflab.convert.keymap import PICKLE_SUFFIXES, weights_hash
from difflab.models.base import require
from difflab.models.sd_unet import SD_UNET_CONFIGS, SDUNetConfig
from difflab.models.vae import VAE_CONFIGS, AutoencoderKLConfig

UNET, VAE = "model.diffusion_model.", "first_stage_model."
TEXT = {"sd1": (("cond_stage_model.transformer.", "hf"),), "sd2": (("cond_stage_model.model.", "open_clip"),),
        "sdxl": (("conditioner.embedders.0.transformer.", "hf"), ("conditioner.embedders.1.model.", "open_clip"))}
NAMES = {"sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "SDXL"}
LDM_BUFFERS = frozenset((
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "lvlb_weights",
    "denoiser.sigmas"))
MARKERS = ("v_pred", "ztsnr")
PREDICTION_TYPES = ("epsilon", "v_prediction")
SCHEDULER = {"_class_name": "EulerDiscreteScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
             "beta_end": 0.012, "num_train_timesteps": 1000, "steps_offset": 1, "timestep_spacing": "leading"}
RESOLUTION = {"sd1": 512, "sd2": 768, "sdxl": 1024}         # SD 2.x with epsilon: 512 (the -base models)
SD1_HEADS, HEAD_WIDTH = 8, 64


def load_single_file(path, prediction_type: str | None = None) -> dict:
    """The parts of an SD 1.x / 2.x or SDXL single-file checkpoint as the Pipeline's keyword arguments
    (see the module docstring for the rules); nothing is downloaded, nothing runs from the file."""
    from difflab.codecs import VAECodec
    from difflab.conditioning import Conditioner
    from difflab.convert.diffusers_scheduler import from_scheduler_config
    from difflab.convert.diffusers_unet import sd_unet_from_source
    from difflab.convert.diffusers_vae import vae_from_tensors

    path = _checked_path(path)
    require(prediction_type is None or prediction_type in PREDICTION_TYPES,
            f"prediction_type must be one of {PREDICTION_TYPES} or None (the family's default), "
            f"got {prediction_type!r}")
    with _open(path) as f:                 # every config and shape is checked before a tensor is read
        keys = list(f.keys())
        family = detect_family(keys, str(path))
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
        text_dim, pooled_dim = _text_widths(shapes, family, keys, str(path))
        cfg = unet_config(shapes, family, pooled_dim, str(path))
        vae_cfg = vae_config(shapes, family, str(path))
        _check_consistent(cfg, vae_cfg, text_dim, family, str(path))
        encoder = _text_encoder(f, family, keys, str(path))
        unet = sd_unet_from_source(cfg, {k[len(UNET):]: v for k, v in shapes.items() if k.startswith(UNET)},
                                   lambda k: f.get_tensor(UNET + k), "original", f"{path} (UNet {UNET}*)")
        codec = VAECodec(vae_from_tensors(vae_cfg, f, "original", f"{path} (VAE {VAE}*)", VAE).requires_grad_(False))
    unet = unet.eval().requires_grad_(False)
    scheduler = from_scheduler_config(_scheduler_config(family, keys, prediction_type))
    prediction_type = scheduler["prediction_type"]
    model = SizeConditioned(unet, codec.downsampling) if family == "sdxl" else CrossAttentionOnly(unet)
    resolution = 512 if family == "sd2" and prediction_type == "epsilon" else RESOLUTION[family]
    defaults = {**(SDXL_DEFAULTS if family == "sdxl" else SD_DEFAULTS), "sampler": scheduler["sampler"],
                "spacing": scheduler["spacing"]}
    return {"model": model, "schedule": scheduler["schedule"], "prediction_type": prediction_type,
            "conditioner": Conditioner(encoder), "codec": codec, "resolution": resolution, "name": path.stem,
            "weights": weights_hash(path), "defaults": defaults, "folder": path}


def _scheduler_config(family: str, keys, prediction_type: str | None) -> dict:
    """The family's diffusers scheduler config: the prediction type given, else ComfyUI's ``v_pred``
    marker, else the family's default (see the module docstring)."""
    prediction_type = prediction_type or ("v_prediction" if family == "sd2" or "v_pred" in keys else "epsilon")
    zero_snr = "v_pred" in keys and "ztsnr" in keys                   # as ComfyUI reads the markers
    return SCHEDULER | {"prediction_type": prediction_type, "rescale_betas_zero_snr": zero_snr,
                        "timestep_spacing": "trailing" if zero_snr else "leading"}


def _checked_path(path) -> Path:
    path = Path(path)
    require(path.suffix.lower() not in PICKLE_SUFFIXES + (".pkl", ".pickle"),
            f"{path}: a pickle checkpoint ({path.suffix}) is not opened, since loading one can run code; "
            f"convert it to .safetensors with a tool you trust")
    require(path.suffix.lower() == ".safetensors", f"{path}: only .safetensors single files are loaded")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return path


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a complete safetensors file (truncated or damaged?): {e}") from None


def _found(keys) -> str:
    groups: dict[str, int] = {}
    for key in keys:
        group = ".".join(key.split(".")[:2])
        groups[group] = groups.get(group, 0) + 1
    return ", ".join(f"{g} ({n})" for g, n in sorted(groups.items(), key=lambda item: -item[1])[:6])


def text_parts(family: str, keys) -> tuple[tuple[str, str], ...]:
    """(prefix, layout) of each text tower of a ``family`` file (SD 2.x saved by Stability's sgm code
    keeps its OpenCLIP tower under ``conditioner.embedders.0.model.``)."""
    if family == "sd2" and not any(k.startswith(TEXT["sd2"][0][0]) for k in keys):
        return (("conditioner.embedders.0.model.", "open_clip"),)
    return TEXT[family]


def detect_family(keys, source: str = "single file") -> str:
    """"sd1", "sd2" or "sdxl" from the key patterns (one line naming what was found if none fits)."""
    def has(prefix):
        return any(k.startswith(prefix) for k in keys)
    sgm_open_clip = has("conditioner.embedders.0.model.transformer.resblocks.") and not has("conditioner.embedders.1.")
    if sgm_open_clip and has(UNET + "label_emb."):
        raise ValueError(f"{source}: an SDXL refiner checkpoint (OpenCLIP bigG alone, size-conditioned UNet) is "
                         f"recognised but not loadable; difflab loads SD 1.x, SD 2.x and SDXL base single files")
    family = ("sdxl" if has("conditioner.embedders.0.transformer.") and has("conditioner.embedders.1.model.")
              else "sd2" if has("cond_stage_model.model.transformer.resblocks.") or sgm_open_clip
              else "sd1" if has("cond_stage_model.transformer.") else None)
    missing = [part for part, found in ((f"UNet ({UNET}*)", has(UNET)), (f"VAE ({VAE}*)", has(VAE)),
                                        ("text encoder of a known layout", family)) if not found]
    require(not missing, f"{source}: not an SD 1.x / 2.x or SDXL single-file checkpoint: it has no "
                         f"{' and no '.join(missing)}; found: {_found(keys) or 'no tensors'}")
    require(family != "sdxl" or has(UNET + "label_emb."),
            f"{source}: SDXL text encoders but a UNet without label_emb (size conditioning); not an SDXL base file")
    parts = (UNET, VAE) + tuple(prefix for prefix, _ in text_parts(family, keys))
    stray = [k for k in keys if not k.startswith(parts + ("model_ema.",)) and k not in LDM_BUFFERS | set(MARKERS)]
    if stray:
        raise ValueError(f"{source}: tensor {stray[0]!r} belongs to no part of a {NAMES[family]} checkpoint "
                         f"({len(stray)} such; its parts: {', '.join(p + '*' for p in parts)})")
    return family


def _text_widths(shapes: dict, family: str, keys, source: str) -> tuple[int, int | None]:
    """The width of the text tokens the UNet attends to (SDXL: both towers side by side) and SDXL's
    pooled width, from the shapes (checking each tower's config)."""
    from difflab.convert.original_clip import text_config

    configs = []
    for prefix, layout in text_parts(family, keys):
        tower = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
        try:
            configs.append(text_config(tower, layout, penultimate=family == "sd2"))
        except ValueError as error:
            raise ValueError(f"{source} (text {prefix}*): {error}") from None
    pooled = configs[-1].get("projection_dim") if family == "sdxl" else None
    require(family != "sdxl" or pooled is not None,
            f"{source}: SDXL's second text encoder has no text_projection (its pooled output)")
    return sum(c["hidden_size"] for c in configs), pooled


def _text_encoder(f, family: str, keys, source: str):
    """The family's text encoder (SD 1.x / 2.x: the last state; SDXL: both penultimate)."""
    from difflab.convert.original_clip import PAD_TOKEN, SingleFileCLIPEncoder, clip_tokenizer, load_text_tower
    from difflab.models.text import DualCLIPEncoder

    def encoder(prefix, layout, hidden_layer, **kwargs):
        model = load_text_tower(f, prefix, layout, source=f"{source} (text {prefix}*)", **kwargs)
        tokenizer = clip_tokenizer(PAD_TOKEN[layout], model.config.max_position_embeddings)
        return SingleFileCLIPEncoder(model, tokenizer, hidden_layer, f"{source}:{prefix}")
    if family != "sdxl":
        (prefix, layout), = text_parts(family, keys)
        return encoder(prefix, layout, -1, penultimate=family == "sd2")
    (first, first_layout), (second, second_layout) = TEXT["sdxl"]
    # zero_empty: force_zeros_for_empty_prompt, true in SDXL base's model_index.json (diffusers' default)
    return DualCLIPEncoder(encoder(first, first_layout, -2), encoder(second, second_layout, -2, projection=True),
                           zero_empty=True)


def _shape(shapes: dict, key: str, source: str, part: str) -> tuple:
    require(key in shapes, f"{source}: missing tensor {key!r}, which every {part} of this layout has")
    return shapes[key]


def _count(shapes: dict, pattern: str) -> int:
    n = 0
    while pattern.format(n) in shapes:
        n += 1
    return n


def unet_config(shapes: dict[str, tuple], family: str, pooled_dim: int | None = None,
                source: str = "single file") -> SDUNetConfig:
    """The SDUNet config of a file's UNet (original layout, keys with prefix) from its shapes."""
    s = {k[len(UNET):]: v for k, v in shapes.items() if k.startswith(UNET)}
    shape = lambda key: _shape(s, key, source, "UNet")                                     # noqa: E731
    blocks = {int(m.group(1)) for k in s if (m := re.match(r"input_blocks\.(\d+)\.", k))}
    downsamplers = sum(f"input_blocks.{i}.0.op.weight" in s for i in blocks)
    n = downsamplers + 1
    per_level, rest = divmod(len(blocks) - 1 - downsamplers, n)
    require(blocks == set(range(len(blocks))) and rest == 0 and per_level >= 1,
            f"{source}: the UNet's {len(blocks)} input blocks with {downsamplers} downsamplers are not levels of "
            f"equal depth")
    first_down = [1 + i * (per_level + 1) for i in range(n)]          # input block of level i's first ResNet
    first_up = [(n - 1 - i) * (per_level + 1) for i in range(n)]     # output block of level i's first ResNet
    depth = lambda where: _count(s, where + ".transformer_blocks.{}.norm1.weight")        # noqa: E731
    channels = tuple(shape(f"input_blocks.{b}.0.out_layers.3.weight")[0] for b in first_down)
    depths = [depth(f"input_blocks.{b}.1") or depth(f"output_blocks.{u}.1") or 1 for b, u in zip(first_down, first_up)]
    depths[-1] = depth("middle_block.1")                             # SDUNet's middle uses the last level's depth
    require(depths[-1] >= 1, f"{source}: the UNet's middle block has no transformer (middle_block.1.*)")
    if family == "sd1":
        heads = (SD1_HEADS,) * n
    else:
        require(all(c % HEAD_WIDTH == 0 for c in channels),
                f"{source}: {NAMES[family]} attention has heads of width {HEAD_WIDTH}; UNet widths {channels} are not "
                f"multiples of it")
        heads = tuple(c // HEAD_WIDTH for c in channels)
    extra = {}
    if family == "sdxl":
        add_embed_dim = shape("label_emb.0.0.weight")[1]
        time_ids_dim, rest = divmod(add_embed_dim - pooled_dim, 6)
        require(rest == 0 and time_ids_dim >= 1, f"{source}: the UNet's label_emb takes {add_embed_dim} features, "
                f"which is not the pooled text width {pooled_dim} plus 6 size ids of equal width")
        extra = {"time_ids_dim": time_ids_dim, "add_embed_dim": add_embed_dim}
    return replace(SD_UNET_CONFIGS[family], in_channels=shape("input_blocks.0.0.weight")[1],
                   out_channels=shape("out.2.weight")[0], channels=channels, layers_per_block=per_level,
                   down_attention=tuple(depth(f"input_blocks.{b}.1") > 0 for b in first_down),
                   up_attention=tuple(depth(f"output_blocks.{u}.1") > 0 for u in first_up), heads=heads,
                   transformer_depth=tuple(depths),
                   context_dim=shape("middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1],
                   linear_projection=len(shape("middle_block.1.proj_in.weight")) == 2, **extra)


def vae_config(shapes: dict[str, tuple], family: str, source: str = "single file") -> AutoencoderKLConfig:
    """The AutoencoderKL config of a file's autoencoder (original layout, keys with prefix) from its shapes."""
    s = {k[len(VAE):]: v for k, v in shapes.items() if k.startswith(VAE)}
    shape = lambda key: _shape(s, key, source, "autoencoder")                              # noqa: E731
    levels = _count(s, "encoder.down.{}.block.0.conv1.weight")
    require(levels >= 1, f"{source}: the autoencoder has no encoder levels ({VAE}encoder.down.0.block.0.*)")
    return replace(VAE_CONFIGS["sdxl" if family == "sdxl" else "sd"], in_channels=shape("encoder.conv_in.weight")[1],
                   latent_channels=shape("decoder.conv_in.weight")[1],
                   channels=tuple(shape(f"encoder.down.{i}.block.0.conv2.weight")[0] for i in range(levels)),
                   layers_per_block=_count(s, "encoder.down.0.block.{}.conv1.weight"),
                   mid_attention="encoder.mid.attn_1.q.weight" in s, quant_conv="quant_conv.weight" in s,
                   post_quant_conv="post_quant_conv.weight" in s)


def _check_consistent(cfg: SDUNetConfig, vae_cfg: AutoencoderKLConfig, text_dim: int, family: str, source: str):
    latent = vae_cfg.latent_channels
    require(cfg.in_channels == latent and cfg.out_channels == latent,
            f"{source}: the UNet takes {cfg.in_channels} channels and gives {cfg.out_channels}, the autoencoder's "
            f"latents have {latent}; difflab loads text-to-image checkpoints (inpainting and pix2pix files add "
            f"input channels)")
    require(cfg.context_dim == text_dim, f"{source}: the UNet attends to {cfg.context_dim}-wide text tokens, the "
                                         f"{NAMES[family]} text encoder gives {text_dim}")
