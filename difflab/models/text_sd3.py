"""Stable Diffusion 3's text conditioning as one :class:`~difflab.models.text.TextEncoder`
(Esser et al. 2024, "Scaling Rectified Flow Transformers", Sec. 4 and Fig. 2a).

Three encoders read each prompt: CLIP ViT-L/14 and OpenCLIP bigG/14 (their penultimate hidden
states, 77 positions each, as in SDXL) and T5-XXL (its final hidden state, ``t5_length`` positions).
The network's text tokens are::

    [ CLIP-L ; CLIP-G  zero-padded to width W ]   77 rows        W = the T5 / joint attention width
    [ T5                                      ]   t5_length rows          (4096 for SD3)

stacked along the sequence, ``[B, 77 + t5_length, W]``, and the pooled vector is both CLIPs'
projected end-of-text states side by side ``[B, P_L + P_G]``. Without a T5 encoder (a folder saved
with ``text_encoder_3=None``) its rows are zeros, as diffusers' pipeline feeds them. Every position
is attended (the mask is all true; SD3 passes no attention mask to T5 or to the transformer), and
the empty prompt is encoded like any other (SD3 has no zeroed unconditional input, unlike SDXL).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from difflab.models.text import CLIPPromptEncoder, TextEncoder, _TransformersEncoder

T5_LENGTH = 256           # diffusers' max_sequence_length default for StableDiffusion3Pipeline


class T5PromptEncoder(_TransformersEncoder):
    """T5's encoder as SD3 runs it: prompts padded (and cut) to ``max_length`` tokens, the model run
    with no attention mask, every position kept. No pooled vector (an empty [B, 0])."""

    def __init__(self, model_dir, tokenizer_dir, max_length: int = T5_LENGTH, cache_size: int = 4096):
        import transformers

        self.model_dir, self.tokenizer_dir = Path(model_dir), Path(tokenizer_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"no T5 text encoder at {model_dir} (no config.json); nothing is downloaded")
        model = transformers.T5EncoderModel.from_pretrained(self.model_dir, local_files_only=True, use_safetensors=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(self.tokenizer_dir, local_files_only=True)
        super().__init__(model, tokenizer, max_length, cache_size)
        self.dim = model.config.d_model

    @property
    def spec(self) -> dict:
        return {"type": "t5_prompt", "model_dir": str(self.model_dir), "tokenizer_dir": str(self.tokenizer_dir),
                "max_length": self.max_length}

    def _encode_batch(self, prompts):
        ids = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                             add_special_tokens=True, return_tensors="pt")["input_ids"].to(self.device)  # [B, L5]
        tokens = self.model(input_ids=ids).last_hidden_state                            # [B, L5, W]
        return tokens, torch.ones(ids.shape, dtype=torch.bool), tokens.new_zeros(len(prompts), 0)


class SD3TextEncoder(TextEncoder):
    """``encode(prompts) -> tokens [B, 77 + t5_length, width], mask (all true), pooled [B, P_L + P_G]``.

    ``clip_l``, ``clip_g``: :class:`CLIPPromptEncoder` with ``hidden_layer=-2`` over
    ``CLIPTextModelWithProjection`` models; ``t5``: a :class:`T5PromptEncoder` or None (zeros of
    ``t5_length`` rows). ``width``: the network's text-token width (``joint_attention_dim``).
    """

    def __init__(self, clip_l: CLIPPromptEncoder, clip_g: CLIPPromptEncoder, t5: T5PromptEncoder | None,
                 width: int, t5_length: int = T5_LENGTH, cache_size: int = 4096):
        if clip_l.max_length != clip_g.max_length:
            raise ValueError(f"the two CLIP tokenizers pad to different lengths ({clip_l.max_length}, "
                             f"{clip_g.max_length})")
        if clip_l.hidden_layer != -2 or clip_g.hidden_layer != -2:
            raise ValueError("SD3 reads both CLIPs' penultimate hidden states: build them with hidden_layer=-2")
        if clip_l.dim + clip_g.dim > width:
            raise ValueError(f"the CLIP token widths {clip_l.dim} + {clip_g.dim} exceed the text width {width}")
        if t5 is not None and (t5.dim != width or t5.max_length != t5_length):
            raise ValueError(f"the T5 encoder gives [{t5.max_length}, {t5.dim}] tokens; this network takes "
                             f"[{t5_length}, {width}]")
        super().__init__(clip_l.max_length + t5_length, cache_size)
        self.clip_l, self.clip_g, self.t5 = clip_l, clip_g, t5
        self.dim, self.t5_length = width, t5_length

    def to(self, device):
        for encoder in (self.clip_l, self.clip_g, self.t5):
            if encoder is not None:
                encoder.to(device)
        return super().to(device)

    @property
    def spec(self) -> dict:
        return {"type": "sd3", "clip_l": self.clip_l.spec, "clip_g": self.clip_g.spec,
                "t5": None if self.t5 is None else self.t5.spec, "width": self.dim, "t5_length": self.t5_length}

    def _encode_batch(self, prompts):
        tokens_l, _, pooled_l = self.clip_l._encode_batch(prompts)                      # [B, 77, D_L], [B, P_L]
        tokens_g, _, pooled_g = self.clip_g._encode_batch(prompts)                      # [B, 77, D_G], [B, P_G]
        clip = torch.cat([tokens_l, tokens_g], dim=-1)                                  # [B, 77, D_L + D_G]
        clip = F.pad(clip, (0, self.dim - clip.shape[-1]))                              # [B, 77, W]
        if self.t5 is None:
            t5 = clip.new_zeros(len(prompts), self.t5_length, self.dim)                 # [B, L5, W]
        else:
            t5 = self.t5._encode_batch(prompts)[0].to(clip.dtype)                       # [B, L5, W]
        tokens = torch.cat([clip, t5], dim=1)                                           # [B, 77 + L5, W]
        pooled = torch.cat([pooled_l, pooled_g], dim=-1)                                # [B, P_L + P_G]
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool), pooled


def sd3_text_encoder_from_folders(folder, width: int, with_t5: bool, t5_length: int = T5_LENGTH) -> SD3TextEncoder:
    """The encoder of a diffusers SD3 folder: ``text_encoder``/``tokenizer`` (CLIP-L),
    ``text_encoder_2``/``tokenizer_2`` (CLIP-G) and, ``with_t5``, ``text_encoder_3``/``tokenizer_3`` (T5)."""
    folder = Path(folder)
    clip_l = CLIPPromptEncoder(folder / "text_encoder", folder / "tokenizer", hidden_layer=-2)
    clip_g = CLIPPromptEncoder(folder / "text_encoder_2", folder / "tokenizer_2", hidden_layer=-2)
    t5 = T5PromptEncoder(folder / "text_encoder_3", folder / "tokenizer_3", t5_length) if with_t5 else None
    return SD3TextEncoder(clip_l, clip_g, t5, width, t5_length)
