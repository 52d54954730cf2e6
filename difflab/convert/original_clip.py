"""The CLIP text towers of single-file checkpoints -> transformers' ``CLIPTextModel`` (or
``CLIPTextModelWithProjection``), and the CLIP tokenizer, built from the BPE file difflab ships.

Original (CompVis / Stability) checkpoints hold their text towers in one of two layouts:

- ``hf``: OpenAI's CLIP ViT-L/14 text tower saved by transformers (SD 1.x under
  ``cond_stage_model.transformer.``, SDXL's first encoder under ``conditioner.embedders.0.transformer.``):
  transformers' own names behind ``text_model.`` (very old SD 1.x files lack that prefix), so the
  map is the identity on names. ``text_model.embeddings.position_ids`` (a buffer: 0..76) is skipped.
- ``open_clip``: OpenCLIP's text tower (SD 2.x's ViT-H/14 under ``cond_stage_model.model.``,
  SDXL's ViT-bigG/14 under ``conditioner.embedders.1.model.``)::

    transformers (CLIPTextModel)                     OpenCLIP
    embeddings.token_embedding.weight                token_embedding.weight
    embeddings.position_embedding.weight             positional_embedding
    encoder.layers.N.self_attn.{q,k,v}_proj.*        transformer.resblocks.N.attn.in_proj_{weight,bias} (rows q | k | v)
    encoder.layers.N.self_attn.out_proj.*            transformer.resblocks.N.attn.out_proj.*
    encoder.layers.N.layer_norm1 / layer_norm2       transformer.resblocks.N.ln_1 / ln_2
    encoder.layers.N.mlp.fc1 / fc2                   transformer.resblocks.N.mlp.c_fc / c_proj
    final_layer_norm                                 ln_final
    text_projection.weight [P, D]                    text_projection [D, P] (applied as x @ W: transposed)

  ``logit_scale`` (the contrastive temperature) is skipped. SD 2.x reads the *penultimate* layer
  (Stability's ``FrozenOpenCLIPEmbedder(layer="penultimate")``, then ``ln_final``), so its last
  resblock and ``text_projection`` are skipped too and the model has one layer fewer than the file
  (23 of 24), as diffusers' SD 2 ``text_encoder`` and its converter (``SD_2_TEXT_ENCODER_KEYS_TO_IGNORE``).

Loading goes through :func:`difflab.convert.keymap.load_mapped` on a view of the file
(:class:`_View`) that splits each fused ``in_proj`` into ``#q``, ``#k``, ``#v`` and presents
``text_projection#T`` transposed: every tensor under the prefix is used or skipped by the rules
above (else one line names it), every shape is checked before a tensor is read.

Sizes come from the tensors' shapes (width, layers, MLP width, vocabulary, positions, projection);
what shapes cannot tell are the published constants of the layout, which every SD / SDXL text tower
shares: heads of width 64 (ViT-L/14 text: 768 / 12; ViT-H/14: 1024 / 16; ViT-bigG/14: 1280 / 20, in
OpenCLIP's ``model_configs/ViT-*.json``), ``quick_gelu`` for OpenAI's CLIP (it was trained with it)
and exact ``gelu`` for OpenCLIP's (its default ``nn.GELU``), LayerNorm eps 1e-5 (both codes' default).

The tokenizer: a single file holds no vocabulary. CLIP's BPE (OpenAI's ``bpe_simple_vocab_16e6``,
MIT; the same for SD 1.x, 2.x and both SDXL encoders) ships in ``difflab/assets/tokenizers/clip/``.
The vocabulary is the 256 byte characters, the same with ``</w>``, one token per merge (the first
49152 - 256 - 2 merge lines after the header), then ``<|startoftext|>``, ``<|endoftext|>``: 49408.
OpenAI's CLIP-L pads with ``<|endoftext|>``; OpenCLIP pads with token 0 (``"!"``), as diffusers'
SD 2 ``tokenizer`` and SDXL ``tokenizer_2`` do (``pad_token="!"`` in its ``convert_from_ckpt``).
"""

from __future__ import annotations

import functools
import gzip
import re
from pathlib import Path

import torch

from difflab.convert.keymap import load_mapped
from difflab.models.base import require
from difflab.models.text import CLIPPromptEncoder

BPE_FILE = Path(__file__).resolve().parents[1] / "assets" / "tokenizers" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
HEAD_WIDTH = 64
LAYOUTS = ("hf", "open_clip")
ACTIVATION = {"hf": "quick_gelu", "open_clip": "gelu"}
PAD_TOKEN = {"hf": "<|endoftext|>", "open_clip": "!"}
SPLIT, TRANSPOSED = "#", "#T"
# The published towers (transformers CLIPTextConfig values), for reference and the tests: shapes must give these.
PUBLISHED = {
    "clip_l": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                   hidden_act="quick_gelu"),
    "open_clip_h_penultimate": dict(hidden_size=1024, num_hidden_layers=23, num_attention_heads=16,
                                    intermediate_size=4096, hidden_act="gelu"),
    "open_clip_bigg": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=20, intermediate_size=5120,
                           hidden_act="gelu", projection_dim=1280),
}


def _layers(keys, pattern: str) -> int:
    """How many consecutive layers ``pattern`` (a regex with one group: the index) finds."""
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    require(found == set(range(len(found))), f"text encoder layers must be numbered 0..n-1, found {sorted(found)}")
    return len(found)


def text_config(shapes: dict[str, tuple], layout: str, penultimate: bool = False) -> dict:
    """``CLIPTextConfig`` keyword arguments from the shapes of a tower's tensors (keys without prefix)."""
    require(layout in LAYOUTS, f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "hf":
        stem = "text_model." if any(k.startswith("text_model.") for k in shapes) else ""
        token, position = (shapes.get(f"{stem}embeddings.{n}_embedding.weight") for n in ("token", "position"))
        layers = _layers(shapes, rf"{re.escape(stem)}encoder\.layers\.(\d+)\.")
        mlp, projection = shapes.get(f"{stem}encoder.layers.0.mlp.fc1.weight"), None
    else:
        token, position = shapes.get("token_embedding.weight"), shapes.get("positional_embedding")
        layers = _layers(shapes, r"transformer\.resblocks\.(\d+)\.") - int(penultimate)
        mlp, projection = shapes.get("transformer.resblocks.0.mlp.c_fc.weight"), shapes.get("text_projection")
    require(token is not None and position is not None and mlp is not None and layers >= 1,
            f"a CLIP text tower in the {layout} layout needs token and position embeddings and layers")
    width = token[1]
    require(width % HEAD_WIDTH == 0, f"text width {width} is not a multiple of {HEAD_WIDTH} (the head width "
                                     f"of every Stable Diffusion text encoder)")
    require(token[0] == VOCAB_SIZE, f"the text encoder's vocabulary has {token[0]} tokens; CLIP's tokenizer has "
                                    f"{VOCAB_SIZE}")
    config = dict(vocab_size=token[0], hidden_size=width, intermediate_size=mlp[0], num_hidden_layers=layers,
                  num_attention_heads=width // HEAD_WIDTH, max_position_embeddings=position[0],
                  hidden_act=ACTIVATION[layout], layer_norm_eps=1e-5, bos_token_id=VOCAB_SIZE - 2,
                  eos_token_id=VOCAB_SIZE - 1, pad_token_id=1)
    if projection is not None and not penultimate:
        config["projection_dim"] = projection[1]
    return config


def open_clip_names(layers: int, projection: bool) -> dict[str, str]:
    """OpenCLIP name (``#q``/``#k``/``#v``: rows of a fused in_proj; ``#T``: transposed) -> transformers' name
    (without ``text_model.``)."""
    names = {"token_embedding.weight": "embeddings.token_embedding.weight",
             "positional_embedding": "embeddings.position_embedding.weight",
             "ln_final.weight": "final_layer_norm.weight", "ln_final.bias": "final_layer_norm.bias"}
    if projection:
        names["text_projection" + TRANSPOSED] = "text_projection.weight"
    leaves = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
              "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for n in range(layers):
        theirs, ours = f"transformer.resblocks.{n}", f"encoder.layers.{n}"
        for param in ("weight", "bias"):
            names |= {f"{theirs}.attn.in_proj_{param}{SPLIT}{x}": f"{ours}.self_attn.{x}_proj.{param}" for x in "qkv"}
            names |= {f"{theirs}.{a}.{param}": f"{ours}.{b}.{param}" for a, b in leaves.items()}
    return names


def _model_key(model_keys, name: str) -> str:
    """transformers' key of a name: ``CLIPTextModel`` keeps it bare (transformers >= 5.6),
    ``CLIPTextModelWithProjection`` behind ``text_model.`` (except its ``text_projection``)."""
    return name if name in model_keys or f"text_model.{name}" not in model_keys else f"text_model.{name}"


def _bare(key: str) -> str:
    return key.removeprefix("text_model.")


class _View:
    """A safetensors file (``safe_open``) as :func:`load_mapped` reads it: ``skip`` keys hidden, a fused
    ``in_proj`` seen as three tensors ``key#q``, ``key#k``, ``key#v`` and ``key#T`` transposed (read lazily)."""

    def __init__(self, f, prefix: str, skip: set[str], fused: tuple[str, ...], transposed: tuple[str, ...]):
        self.f, keys = f, [k for k in f.keys() if k.startswith(prefix) and k[len(prefix):] not in skip]
        self.parts = {}                          # virtual key -> (file key, how)
        for key in keys:
            rest = key[len(prefix):]
            if rest.endswith(fused):
                self.parts |= {f"{key}{SPLIT}{x}": (key, i) for i, x in enumerate("qkv")}
            elif rest in transposed:
                self.parts[key + TRANSPOSED] = (key, "T")
            else:
                self.parts[key] = (key, None)

    def keys(self):
        return list(self.parts)

    def get_slice(self, key):
        source, how = self.parts[key]
        shape = tuple(self.f.get_slice(source).get_shape())
        if how == "T":
            shape = shape[::-1]
        elif how is not None and shape[0] % 3 == 0:         # (else the whole shape, which the check refuses)
            shape = (shape[0] // 3, *shape[1:])
        return _Shape(shape)

    def get_tensor(self, key):
        source, how = self.parts[key]
        tensor = self.f.get_tensor(source)
        if how == "T":
            return tensor.T.contiguous()
        return tensor if how is None else tensor.chunk(3, dim=0)[how].clone()


class _Shape:
    def __init__(self, shape):
        self.shape = shape

    def get_shape(self):
        return self.shape


def load_text_tower(f, prefix: str, layout: str, penultimate: bool = False, projection: bool = False,
                    source: str = "single file"):
    """A transformers CLIP text model holding the tower under ``prefix`` of an open safetensors file.

    ``penultimate``: SD 2.x's use of an OpenCLIP tower (its last block and projection skipped);
    ``projection``: a ``CLIPTextModelWithProjection`` (SDXL's second encoder).
    """
    import transformers

    shapes = {k[len(prefix):]: tuple(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith(prefix)}
    config = transformers.CLIPTextConfig(**text_config(shapes, layout, penultimate))
    require(not projection or "text_projection" in shapes,
            f"{source}: the text encoder under {prefix!r} has no text_projection, which SDXL's second encoder needs")
    with torch.device("meta"):
        model = (transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel)(config)
    keys = model.state_dict().keys()
    if layout == "hf":
        stem = "text_model." if any(k.startswith("text_model.") for k in shapes) else ""
        names, skip = {stem + _bare(k): _bare(k) for k in keys}, {f"{stem}embeddings.position_ids"}
        view = _View(f, prefix, skip, (), ())
    else:
        last = config.num_hidden_layers
        names = open_clip_names(last, projection)
        unused = {"text_projection"} | {k for k in shapes if k.startswith(f"transformer.resblocks.{last}.")}
        skip = {"logit_scale"} | (unused if penultimate else set())
        view = _View(f, prefix, skip, (".in_proj_weight", ".in_proj_bias"), ("text_projection",))
    load_mapped(model, view, {theirs: _model_key(keys, ours) for theirs, ours in names.items()}, source, prefix)
    for name in [n for n, b in model.named_buffers() if b.is_meta]:   # non-persistent buffers: rebuild them
        require(name.endswith("position_ids"), f"transformers' CLIP has a buffer {name!r} difflab does not rebuild")
        owner = model.get_submodule(name.rpartition(".")[0])
        owner.register_buffer("position_ids", torch.arange(config.max_position_embeddings)[None], persistent=False)
    return model.eval().requires_grad_(False)


def original_from_clip_state(state: dict[str, torch.Tensor], layout: str, prefix: str) -> dict[str, torch.Tensor]:
    """The inverse direction: a transformers CLIP text model's state dict in an original layout under
    ``prefix`` (OpenCLIP: q, k, v fused into ``in_proj``, the projection transposed). The tests write
    single files with it; diffusers' own converters read them back (see the test's docstring)."""
    require(layout in LAYOUTS, f"layout must be one of {LAYOUTS}, got {layout!r}")
    bare = {_bare(k): v for k, v in state.items() if not k.endswith("position_ids")}
    if layout == "hf":
        return {f"{prefix}text_model.{k}" if k != "text_projection.weight" else prefix + k: v for k, v in bare.items()}
    layers = 1 + max(int(k.split(".")[2]) for k in bare if k.startswith("encoder.layers."))
    out, fused = {}, {}
    for theirs, ours in open_clip_names(layers, "text_projection.weight" in bare).items():
        key, _, part = theirs.partition(SPLIT)
        if part in ("q", "k", "v"):
            fused.setdefault(prefix + key, []).append(bare[ours])
        else:
            out[prefix + key] = bare[ours].T.contiguous() if part == "T" else bare[ours]
    return out | {key: torch.cat(parts, 0) for key, parts in fused.items()}


# ----- the tokenizer ---------------------------------------------------------------------------------

def byte_alphabet() -> list[str]:
    """The 256 characters standing for bytes (GPT-2's ``bytes_to_unicode``, Radford et al. 2019):
    printable bytes are themselves, the rest move to code points from 256 up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(moved))]


@functools.lru_cache(maxsize=1)
def clip_vocabulary() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """(token -> id, merges) of CLIP's BPE, read from the shipped file (49408 tokens)."""
    require(BPE_FILE.is_file(), f"{BPE_FILE} is missing: reinstall difflab (it ships CLIP's BPE vocabulary)")
    lines = gzip.open(BPE_FILE).read().decode("utf-8").split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1:1 + VOCAB_SIZE - 2 * 256 - 2])   # 48894 after the header
    chars = byte_alphabet()
    tokens = [*chars, *(c + "</w>" for c in chars), *("".join(m) for m in merges), "<|startoftext|>", "<|endoftext|>"]
    require(len(set(tokens)) == VOCAB_SIZE, f"{BPE_FILE} gives {len(set(tokens))} distinct tokens, not {VOCAB_SIZE}")
    return {token: i for i, token in enumerate(tokens)}, merges


def clip_tokenizer(pad_token: str = "<|endoftext|>", max_length: int = 77):
    """A transformers ``CLIPTokenizer`` over the shipped vocabulary (nothing is downloaded)."""
    import transformers

    vocab, merges = clip_vocabulary()
    require(pad_token in vocab, f"pad_token {pad_token!r} is not a CLIP token")
    return transformers.CLIPTokenizer(vocab=dict(vocab), merges=list(merges), pad_token=pad_token,
                                      model_max_length=max_length)


class SingleFileCLIPEncoder(CLIPPromptEncoder):
    """:class:`~difflab.models.text.CLIPPromptEncoder` over a text model and tokenizer built in memory
    from a single file (same tokenising, hidden layer and pooling)."""

    def __init__(self, model, tokenizer, hidden_layer: int = -1, source: str = "", cache_size: int = 4096):
        self.hidden_layer, self.source = hidden_layer, source
        super(CLIPPromptEncoder, self).__init__(model, tokenizer, int(tokenizer.model_max_length), cache_size)
        self.dim = model.config.hidden_size

    @property
    def spec(self) -> dict:
        return {"type": "single_file_clip", "source": self.source, "hidden_layer": self.hidden_layer}
