"""``difflab.Pipeline``: prompts in, images out, each with the recipe that replays it.

    pipe = difflab.Pipeline.from_pretrained()            # the bundled model, or a package folder
    result = pipe("a red circle above a blue square", num_images=4, seed=0)
    result.images[0].save("out.png")                     # or result.save(folder): PNGs with recipes

A pipeline is a network, a schedule and parameterization (the denoiser), a conditioner (prompts ->
network arguments) and a codec (data <-> model space); ``difflab.sample`` runs the sampler. Recipes
are in :mod:`difflab.pipelines.recipes`, edits in :mod:`difflab.pipelines.edit`.

Every argument, recipe and package section is checked before any compute, against
:mod:`difflab.limits` too (images per call, steps, output pixels, prompt length, network size); a
bad one raises ``ValueError`` (``LimitError`` for a limit) with one line naming it.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

import difflab
from difflab import limits
from difflab.codecs import Codec, PixelCodec
from difflab.conditioning import Conditioner
from difflab.data import shapes_grammar as shapes
from difflab.settings import (BUNDLED_MODELS, DEFAULT_MODEL, package_folder, validate_block_cache, validate_deep_cache,
                              validate_guidance_pairing, validate_text)
from difflab.pipelines import edit
from difflab.pipelines.arguments import as_list, check_count, check_latents, from_diffusers_names, image_seeds
from difflab.pipelines.control import ControlMethods
from difflab.pipelines.image_prompt import ImagePromptMethods
from difflab.pipelines.lora import LoraMethods
from difflab.pipelines.packaging import (DEFAULTS, check_pipeline_sections, codec_from_header, sampling_defaults,
                                        save_pipeline)
from difflab.pipelines.recipes import (Result, adapters_base, bundled_model_with_weights, validate_recipe,
                                      weights_hash)
from difflab.sampling import (sample, validate_device, validate_dtype, validate_guidance_method,
                              validate_guidance_rescale, validate_settings)
from difflab.schedules import NoiseSchedule

BUNDLED_MODEL = BUNDLED_MODELS[DEFAULT_MODEL]
# Every word the shapes world's grammar uses (difflab.data.shapes_grammar): a prompt with others is
# outside what a shapes model has seen.
SHAPES_WORDS = frozenset(" ".join([*shapes.SHAPES, *shapes.PLURALS.values(), *shapes.COLOURS, *shapes.SIZES,
                                   *shapes.BACKGROUNDS, *shapes.POSITIONS, *shapes.COUNTS, *shapes.RELATIONS,
                                   "a an and on background grey"]).split())


@dataclass
class Pipeline(LoraMethods, ControlMethods, ImagePromptMethods):
    """A model package made callable: text (or class labels) in, PIL images out.

    Build one with :meth:`from_pretrained`, or directly from its parts: ``Pipeline(model, schedule,
    prediction_type, conditioner, codec, resolution)`` (``conditioner`` may be a bare encoder;
    ``codec`` defaults to a 3-channel :class:`~difflab.codecs.PixelCodec`).
    """

    model: torch.nn.Module
    schedule: NoiseSchedule
    prediction_type: object
    conditioner: Conditioner
    codec: Codec | None = None
    resolution: int = 32
    name: str = "model"
    weights: str = ""
    defaults: dict = field(default_factory=lambda: dict(DEFAULTS))
    folder: Path | None = None
    dataset: str | None = None           # the package's data.dataset: "shapes" enables the vocabulary warning
    dtype: torch.dtype = torch.float32   # the sampling dtype; set with .to(dtype=...)
    controlnets: list = field(default_factory=list)   # [(name, ControlNet, weights hash)]: load_controlnet
    ip_adapter: tuple | None = None      # (name, IPAdapter, image encoder, weights hash): load_ip_adapter

    def __post_init__(self):
        if not isinstance(self.conditioner, Conditioner):
            self.conditioner = Conditioner(self.conditioner)
        if self.codec is None:
            self.codec = PixelCodec(3)

    @classmethod
    def from_pretrained(cls, folder=None, prediction_type: str | None = None, controlnet=None,
                        ip_adapter=None) -> "Pipeline":
        """The pipeline of a model package folder (default: the bundled ``DEFAULT_MODEL``, or the base an
        adapter given here records). Its sections,
        sampling defaults and network size are checked before the network is built. ``controlnet``:
        a ControlNet package (or a list of them) to load (:meth:`load_controlnet`); ``ip_adapter``: an
        IP-Adapter package, or an official IP-Adapter file with ``image_encoder/`` beside it
        (:meth:`load_ip_adapter`)."""
        if folder is None:
            folder = adapters_base(controlnet, ip_adapter)
        pipe = cls._from_folder(folder, prediction_type)
        for path in [] if controlnet is None else controlnet if isinstance(controlnet, (list, tuple)) else [controlnet]:
            pipe.load_controlnet(path)
        return pipe.load_ip_adapter(ip_adapter) if ip_adapter is not None else pipe

    @classmethod
    def _from_folder(cls, folder, prediction_type) -> "Pipeline":
        from difflab.models.package import load_package, read_config
        from difflab.models.text import text_encoder_from_spec
        folder = BUNDLED_MODEL if folder is None else package_folder(folder)
        if folder.is_file():  # an SD 1.x/2.x/SDXL single file; prediction_type settles SD 2.x's ambiguity
            from difflab.convert.single_file import load_single_file
            return cls(**load_single_file(folder, prediction_type=prediction_type))
        if prediction_type is not None:
            raise ValueError(f"prediction_type= is for single-file checkpoints, where no key says it; {folder} is a "
                             "folder whose scheduler config or package config says it")
        from difflab.convert.diffusers_folder import is_diffusers_folder, load_diffusers
        if is_diffusers_folder(folder):
            return cls(**load_diffusers(folder))
        header = read_config(folder)
        for section, flag, what in (("controlnet", "controlnet", "a ControlNet"), ("ip_adapter", "ip_adapter", "an IP-Adapter")):
            if section in header:
                base = header[section].get("base", "its base model") if isinstance(header[section], dict) else ""
                raise ValueError(f"{folder} is {what} for {base}, not a model: load it with "
                                 f"Pipeline.from_pretrained({base!r}, {flag}=...) (--{flag.replace('_', '-')} on the CLI)")
        schedule, codec = check_pipeline_sections(header, folder)
        defaults = sampling_defaults(header.get("sampling", {}), folder)
        package = load_package(folder)
        meta = package.metadata
        model = package.model
        if not torch.cuda.is_available():
            model = model.to(memory_format=torch.channels_last)
        try:
            encoder = text_encoder_from_spec(meta["conditioning"]["encoder"])
        except (TypeError, ValueError) as error:
            raise ValueError(f"{folder / 'config.json'}: conditioning.encoder: {error}") from None
        return cls(model=model, schedule=schedule, prediction_type=meta["diffusion"]["prediction_type"],
                   conditioner=Conditioner(encoder), codec=codec_from_header(header, folder, codec),
                   resolution=meta["data"]["resolution"], name=folder.name, weights=weights_hash(folder),
                   defaults=defaults, folder=folder, dataset=meta["data"].get("dataset"))

    def save_pretrained(self, folder) -> Path:
        """Write this pipeline as a difflab package (network, sampling defaults, text encoder spec,
        and the VAE in ``vae/`` for a latent model); :meth:`from_pretrained` reads it back."""
        return save_pipeline(self, folder)

    def to(self, device=None, dtype=None) -> "Pipeline":
        """Move (and cast) the network, the VAE, loaded ControlNets and IP-Adapter and the text encoder,
        as diffusers' ``pipe.to``: ``pipe.to("cuda", torch.float16)``. fp16/bf16 are for GPUs; on a CPU
        they are slower than float32 (AVX2 has no fast half-precision matmul). The text encoder keeps
        float32 (its states are cast), as does an IP-Adapter's image encoder. Returns the pipeline."""
        device = validate_device(device) if device is not None else None
        dtype = validate_dtype(dtype) if dtype is not None else None
        adapter, image_encoder = self.ip_adapter[1:3] if self.ip_adapter else (None, None)
        for module in (self.model, self.vae, *(net for _, net, _ in self.controlnets), adapter):
            if module is not None:
                module.to(device=device, dtype=dtype)
        if device is not None:
            self.conditioner.encoder.to(device)
            if image_encoder is not None:
                image_encoder.to(device)
        if dtype is not None:
            self.dtype = dtype
        return self

    def enable_model_cpu_offload(self, device="cuda") -> "Pipeline":
        """Keep the text encoder(s), the network and the VAE in CPU memory, each moved to ``device``
        only while it runs (accelerate's ``cpu_offload_with_hook``, chained; diffusers' name): the
        GPU holds one of them at a time, at the cost of a transfer per stage."""
        from accelerate import cpu_offload_with_hook
        device = validate_device(device)
        hook = None
        for module in [*_text_modules(self.conditioner.encoder, device), self.model, self.vae]:
            if module is not None:
                _, hook = cpu_offload_with_hook(module.to("cpu"), device, prev_module_hook=hook)
        self._execution_device = device
        return self

    def enable_vae_tiling(self, tile: int = 64, overlap: int = 16) -> "Pipeline":
        """Decode latents in overlapping ``tile`` x ``tile`` tiles (diffusers' name): memory follows
        the tile, so outputs larger than the VAE decodes at once fit (:class:`~difflab.codecs.VAECodec`)."""
        self._latent_codec("enable_vae_tiling").set_tiling(tile, overlap)
        return self

    def enable_vae_slicing(self) -> "Pipeline":
        """Decode the images of a batch one at a time (diffusers' name)."""
        self._latent_codec("enable_vae_slicing").slicing = True
        return self

    def _latent_codec(self, what: str):
        if self.vae is None:
            raise ValueError(f"{what}: this pipeline works in pixel space; it has no VAE")
        return self.codec

    @property
    def device(self) -> torch.device:
        """Where sampling runs: the network's device, or the offload target."""
        return getattr(self, "_execution_device", None) or next(self.model.parameters()).device

    @property
    def encoder(self):
        """The conditioner's text (or class-label) encoder."""
        return self.conditioner.encoder

    @property
    def channels(self) -> int:
        """Channels of the images this pipeline makes (data space, not model space)."""
        return self.codec.channels

    @property
    def null_condition(self):
        return self.conditioner.null

    @property
    def vae(self):
        """The autoencoder of a latent model's codec; None in pixel space (DESIGN.md's contract)."""
        return getattr(self.codec, "vae", None)

    # ----- generation ----------------------------------------------------------------------------
    def __call__(self, prompt, negative_prompt=None, num_images: int = 1, seed=None, steps=None, sampler=None,
                 guidance_scale=None, spacing=None, guidance_rescale: float = 0.0, guidance_method: str = "cfg",
                 deep_cache: int | None = None, block_cache: float | None = None, callback=None,
                 progress: bool = False, image=None, strength: float | None = None, mask=None,
                 outpaint=None, mask_blur: float = 0.0, width: int | None = None,
                 height: int | None = None, latents: torch.Tensor | None = None, control_image=None,
                 control_scale=1.0, control_start: float = 0.0, control_end: float = 1.0, ip_image=None,
                 ip_scale: float | None = None, **diffusers_names) -> Result:
        """Text-to-image (``width`` x ``height``, default the model's resolution; sides are multiples
        of :attr:`size_multiple`); ``latents`` (unit Gaussian, the model-space shape; diffusers'
        ``latents=``) replaces the seeds' noise; with ``image``: image-to-image (``strength``), inpainting (``mask``, white =
        regenerate, ``mask_blur`` feathers the seam inside the mask) or outpainting (``outpaint`` =
        (left, right, top, bottom) pixels added and filled); see ``difflab.edit``. ``guidance_method``:
        ``cfg``, ``apg``, ``cfg_zero_star`` or ``cfg_pp`` (a scale in [0, 1], with euler or ddim;
        :mod:`difflab.guidance`). ``deep_cache=N`` (difflab's
        UNet): the deep features are recomputed every N-th evaluation only (DeepCache; off by default);
        ``block_cache=T`` (a DiT or MMDiT): the blocks after the first are skipped while the first block's
        output changes by less than T (first-block caching, :mod:`difflab.models.block_cache`; off by default).
        ``control_image`` (one per loaded ControlNet), ``control_scale``, ``control_start`` and
        ``control_end``: ControlNet steering (:mod:`difflab.pipelines.control`); ``ip_image`` (one, or
        one per output image) and ``ip_scale`` (default: the adapter package's, else 1): an image prompt
        (:mod:`difflab.pipelines.image_prompt`).

        Everything is checked before any compute: ``ValueError`` (``difflab.limits.LimitError`` above
        a limit) names the argument. A prompt outside a shapes model's vocabulary is only warned about.
        diffusers' names are accepted too: ``num_inference_steps``, ``num_images_per_prompt`` and
        ``generator`` (a ``torch.Generator`` that draws the seed, recorded in the recipe)."""
        if diffusers_names:
            steps, num_images, seed = from_diffusers_names(diffusers_names, steps, num_images, seed)
        prompts = self._prompts(prompt, "prompt")
        check_count(num_images, len(prompts))
        prompts = [p for p in prompts for _ in range(num_images)]
        seeds = image_seeds(seed, len(prompts))
        negatives = self._negatives(negative_prompt, len(prompts))
        settings = self._settings(steps, sampler, guidance_scale, spacing)
        validate_guidance_rescale(guidance_rescale)
        validate_guidance_method(guidance_method)
        validate_guidance_pairing(guidance_method, settings["sampler"], settings["guidance_scale"])
        caches = self._caches(deep_cache, block_cache)
        if self.codec.media == "audio" and not (image is None and mask is None and outpaint is None):
            raise ValueError("image, mask and outpaint edit images; this is an audio model")
        edits = edit.prepare(self.codec, self.size_multiple, image, strength, mask, outpaint, mask_blur,
                             len(prompts))
        size = edit.output_size(edits, width, height, self.resolution, self.size_multiple)
        shape = self.codec.model_shape(len(prompts), size[0], size[1])
        limits.check_sample_shape(shape, "output")
        noise = check_latents(latents, shape)
        controls = self._controls(control_image, control_scale, control_start, control_end, size, deep_cache,
                                  len(prompts))
        embedded = getattr(getattr(self.model, "config", None), "guidance_embedding", False)  # LCM: w is an input
        if embedded and (guidance_method != "cfg" or guidance_rescale):
            raise ValueError("this network embeds the guidance scale (a guidance-distilled student): "
                             "guidance_method and guidance_rescale do not apply")
        guided = (settings["guidance_scale"] != 1.0 or guidance_method == "cfg_pp") and not embedded
        ip_scale = self.ip_scale_default if ip_scale is None else ip_scale
        tokens = self._ip_tokens(ip_image, ip_scale, len(prompts), guided)   # checked before the text is encoded
        self._warn_outside_vocabulary(prompts)
        cond, uncond = self._encode(prompts), self._encode(negatives)
        cond, uncond = cond | caches, uncond | caches           # one state: the guided halves are one batch
        if embedded:
            cond["guidance"] = torch.full((len(prompts),), float(settings["guidance_scale"]), device=self.device)
        network = self._controlled(self.model, controls) if controls else self.model
        with self._ip_attached(tokens, ip_scale):
            x = sample(_network_in(network, self.dtype), self.schedule, self.prediction_type, settings["sampler"],
                       settings["steps"], shape=None if noise is not None else shape,
                       seeds=None if noise is not None else seeds, noise=noise, spacing=settings["spacing"], cond=cond,
                       uncond=uncond if guided else None, guidance_scale=settings["guidance_scale"] if guided else 1.0,
                       guidance_rescale=guidance_rescale, guidance_method=guidance_method, callback=callback,
                       progress=progress, device=self.device, **(edits.sample_args(self.codec) if edits else {}))
        outputs = self.codec.outputs(edits.result(self.codec, x) if edits else self.codec.decode(x))
        given = {"latents": "given"} if noise is not None else {}  # not replayable from the recipe alone
        method = {"guidance_method": guidance_method} if guidance_method != "cfg" else {}
        method |= {key: value for key, value in (("deep_cache", deep_cache), ("block_cache", block_cache))
                   if key in caches}
        method |= self._lora_recipe()
        recipes = [self._recipe(p, n, s, settings, guidance_rescale, size) | (edits.recipe() if edits else {}) | given
                   | method | self._control_recipe(controls, control_image, i) | self._ip_recipe(tokens, ip_image, ip_scale, i)
                   for i, (p, n, s) in enumerate(zip(prompts, negatives, seeds))]
        return Result(recipes=recipes, **outputs)

    def replay(self, recipe: dict, image=None, mask=None, control_image=None, ip_image=None) -> Result:
        """Regenerate the image a recipe describes (same pixels on the same machine and weights).
        An edit's recipe needs its input image (and mask) again; their hashes are checked. The recipe
        is checked by :func:`~difflab.pipelines.recipes.validate_recipe`, then as the arguments are."""
        recipe = validate_recipe(recipe, "recipe")
        if recipe.get("weights") and self.weights and recipe["weights"] != self.weights:
            bundled = bundled_model_with_weights(recipe["weights"])
            raise ValueError(f"the recipe was made with weights {recipe['weights']}, this model has {self.weights}"
                             + (f"; they are the bundled model {bundled!r}: Pipeline.from_pretrained({bundled!r})"
                                if bundled else ""))
        if recipe.get("latents"):
            raise ValueError("this recipe's image was made from given latents (latents=), which a recipe does not hold")
        edit.check_replay_inputs(recipe, image, mask)
        self._check_recipe_loras(recipe)
        controls = self._replay_controls(recipe, control_image) | self._replay_ip(recipe, ip_image)
        return self(**controls,
                    prompt=recipe["prompt"], negative_prompt=recipe.get("negative_prompt"), seed=recipe["seed"],
                    steps=recipe["steps"], sampler=recipe["sampler"], guidance_scale=recipe["guidance_scale"],
                    spacing=recipe["spacing"], guidance_rescale=recipe.get("guidance_rescale", 0.0),
                    guidance_method=recipe.get("guidance_method", "cfg"), deep_cache=recipe.get("deep_cache"),
                    block_cache=recipe.get("block_cache"),
                    image=image,
                    strength=recipe.get("strength"), mask=mask, outpaint=recipe.get("outpaint"),
                    mask_blur=recipe.get("mask_blur", 0.0),
                    **({} if image is not None else {"width": recipe.get("width"), "height": recipe.get("height")}))

    def _settings(self, steps, sampler, guidance_scale, spacing) -> dict:
        settings = {"steps": steps, "sampler": sampler, "guidance_scale": guidance_scale, "spacing": spacing}
        settings = {k: self.defaults[k] if v is None else v for k, v in settings.items()}
        settings["spacing"] = settings["spacing"] or self.schedule.default_spacing
        validate_settings(settings["sampler"], settings["steps"], settings["spacing"], settings["guidance_scale"])
        return settings

    def _prompts(self, value, name: str) -> list:
        """Prompts as a list: text (valid UTF-8, within the length limit) or, for a class-label
        model, labels (int or name)."""
        values = as_list(value, name)
        limits.check("images", len(values), f"{name}s in one call")
        for v in values:
            labelled = self.conditioner.class_labels and (v is None or isinstance(v, int) and not isinstance(v, bool))
            if not labelled:
                validate_text(v, name)
        return values

    def vocabulary_warnings(self, prompts: list) -> list[str]:
        """One message per prompt that asks a shapes model for words it never saw (else none). With a
        LoRA loaded there is none: a LoRA may have taught new words (``NOVEL_COLOURS``)."""
        if not (self.dataset == "shapes" or self.folder is not None and Path(self.folder) == BUNDLED_MODEL):
            return []
        if self._lora_recipe():
            return []
        messages = []
        for prompt in dict.fromkeys(p for p in prompts if isinstance(p, str)):
            words = re.findall(r"[a-z]+", prompt.lower())
            unknown = list(dict.fromkeys(w for w in words if w not in SHAPES_WORDS))
            if unknown:
                messages.append(f"prompt {prompt[:80]!r} uses words outside the shapes model's vocabulary "
                                f"({', '.join(unknown[:8])}); it only knows the shapes world, e.g. 'a red circle "
                                f"above a blue square' (difflab.data.shapes_grammar)")
        return messages

    def _warn_outside_vocabulary(self, prompts: list) -> None:
        for message in self.vocabulary_warnings(prompts):
            warnings.warn(message, UserWarning, stacklevel=3)

    def _negatives(self, negative_prompt, n: int) -> list:
        if negative_prompt is None:
            return [self.null_condition] * n
        negatives = self._prompts(negative_prompt, "negative_prompt")
        if len(negatives) == 1:
            return negatives * n
        if len(negatives) != n:
            raise ValueError(f"negative_prompt must be one prompt or one per image ({n}), got {len(negatives)}")
        return negatives

    def _encode(self, prompts: list) -> dict:
        return self.conditioner(prompts, self.device)

    def _caches(self, deep_cache, block_cache) -> dict:
        """The network's keyword arguments for DeepCache or first-block caching (one state per call)."""
        from difflab.models.block_cache import BlockCacheState
        from difflab.models.dit import DiT
        from difflab.models.mmdit import MMDiT
        from difflab.models.unet import DeepCacheState, UNet
        deep_cache, block_cache = validate_deep_cache(deep_cache), validate_block_cache(block_cache)
        if deep_cache not in (None, 1) and block_cache is not None:
            raise ValueError("choose one cache: deep_cache (UNets) or block_cache (transformers)")
        if deep_cache not in (None, 1):
            if not isinstance(self.model, UNet):
                raise ValueError(f"deep_cache is for difflab's UNet; this network is a {type(self.model).__name__}")
            return {"deep_cache": DeepCacheState(deep_cache)}
        if block_cache is not None:
            if not isinstance(self.model, (DiT, MMDiT)):
                raise ValueError(f"block_cache is for difflab's transformers (DiT, MMDiT); this network is a "
                                 f"{type(self.model).__name__} (UNets: deep_cache)")
            return {"block_cache": BlockCacheState(block_cache)}
        return {}

    def _recipe(self, prompt, negative, seed, settings, guidance_rescale, size) -> dict:
        return {"prompt": prompt, "negative_prompt": negative if negative != self.null_condition else None,
                "seed": seed, **settings, "guidance_rescale": guidance_rescale,
                "width": size[0], "height": size[1], "model": self.name, "weights": self.weights,
                "difflab": difflab.__version__}

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (the codec's and the network's downsampling)."""
        return self.codec.size_multiple(getattr(self.model, "size_multiple", 1))


def _text_modules(encoder, device) -> list:
    """The torch modules inside a text encoder (nested encoders included), whose token tensors are
    then made on ``device``."""
    from difflab.models.text import TextEncoder
    modules = []
    if isinstance(encoder, TextEncoder):
        encoder.device = device
        for value in vars(encoder).values():
            if isinstance(value, torch.nn.Module):
                modules.append(value)
            elif isinstance(value, TextEncoder):
                modules += _text_modules(value, device)
    return modules


def _network_in(model, dtype: torch.dtype):
    """The network run in ``dtype`` while the sampler's state stays float32 (as diffusers' schedulers
    upcast their step): half-precision error then stays in each evaluation, not in the trajectory."""
    if dtype == torch.float32:
        return model

    def run(x, t, **cond):
        cond = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in cond.items()}
        return model(x.to(dtype), t, **cond).float()
    return run
