"""The torch-free GGUF tokenizer (butler_jax/weights/gguf_tokenizer.py) against transformers' GGUF reader."""

from __future__ import annotations

import sys

import gguf
import pytest

from butler_jax.errors import CheckpointError
from butler_jax.weights.embedded import embedded_gguf_path
from butler_jax.weights.gguf_file import open_gguf
from butler_jax.weights.gguf_tokenizer import byte_spelling, gguf_tokenizer
from butler_jax.weights.tokenizer import apply_chat_template, load_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Crème brûlée, naïve café — 東京の天気は晴れ 🌤️; Ελληνικά, русский, عربى.",
    "  leading, trailing   \n\n\t  runs   of\u00a0white\r\nspace \n   ",
    "Digits: 0 12 345 6789 3.14159 1,000,000 2026-12-02 x2y3",
    "def f(x):\n    return x**2  # code's \"quotes\" and it's I'll we'd",
    "<|im_start|>user\nspecial tokens inside text<|im_end|><|endoftext|><file_sep>",
]


def _transformers_gguf_tokenizer(path):
    """Transformers' own GGUF tokenizer (the reference; its GGUF reader imports torch)."""
    pytest.importorskip("torch")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def _assert_same_ids(ours, ref, texts) -> None:
    for text in texts:
        for special in (True, False):
            got, want = ours.encode(text, add_special_tokens=special), ref.encode(text, add_special_tokens=special)
            assert got == want, (text, special)
        for skip in (True, False):
            assert ours.decode(got, skip_special_tokens=skip) == ref.decode(got, skip_special_tokens=skip), text
    assert ours(texts, add_special_tokens=False)["input_ids"] == ref(texts, add_special_tokens=False)["input_ids"]


def test_embedded_tokenizer_matches_transformers_gguf(wikitext_test_text) -> None:
    path = embedded_gguf_path()
    ours, ref = gguf_tokenizer(open_gguf(path), name=str(path)), _transformers_gguf_tokenizer(path)
    chat = apply_chat_template(ours, "What is 17 * 23? Answer  in\tdigits.")
    assert chat == apply_chat_template(ref, "What is 17 * 23? Answer  in\tdigits.")
    _assert_same_ids(ours, ref, [*TEXTS, chat, wikitext_test_text[:20000]])
    for text in TEXTS[:5]:
        assert ours.decode(ours.encode(text)) == text
    assert ours.get_vocab() == ref.get_vocab() and len(ours) == len(ref) == 49152
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id, ours.unk_token_id) == (1, 2, 2, 0)
    assert (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id, ref.unk_token_id) == (1, 2, 2, 0)
    assert ours.all_special_ids == ref.all_special_ids and ours.chat_template == ref.chat_template


def _tokenizer_gguf(path, changes: dict) -> None:
    """A tensor-less GGUF holding the embedded model's tokenizer metadata with `changes` (key -> str / bool)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    for name, field in open_gguf(embedded_gguf_path()).fields.items():
        if name.startswith("tokenizer.") and name not in changes:
            writer.add_key_value(name, field.contents(), field.types[0], field.types[-1] if len(field.types) > 1 else None)
    for name, value in changes.items():
        writer.add_key_value(name, value, gguf.GGUFValueType.BOOL if isinstance(value, bool) else gguf.GGUFValueType.STRING)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "gpt-2"])
def test_word_splits_and_bos_match_transformers_gguf(tmp_path, pre) -> None:
    """Llama-3's, Qwen2's and GPT-2's splits (on SmolLM2's vocabulary), with add_bos_token set."""
    path = tmp_path / "tok.gguf"
    _tokenizer_gguf(path, {"tokenizer.ggml.pre": pre, "tokenizer.ggml.add_bos_token": True})
    ours, ref = gguf_tokenizer(open_gguf(path)), _transformers_gguf_tokenizer(path)
    for text in TEXTS:
        split = ours.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)
        assert split == ref.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text), (pre, text)
    _assert_same_ids(ours, ref, TEXTS)
    assert ours.encode("hi")[0] == 1 and ours.encode("hi", add_special_tokens=False)[0] != 1


def test_smollm_split_puts_each_digit_alone() -> None:
    """llama.cpp's "smollm" split, as SmolLM2's tokenizer.json: every numeric character alone
    (`Digits`), then GPT-2's regex. Transformers' GGUF reader skips the first step; the ids differ
    only where a non-ASCII numeric character follows a space (SmolLM2's vocabulary has no token of
    two digits): 2 of the 303,415 tokens of wikitext-2's test split, at " ½"."""
    tok = load_tokenizer("embedded")
    words = [w for w, _ in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str("in 2026, x42y ½")]
    assert words == ["in", "Ġ", "2", "0", "2", "6", ",", "Ġx", "4", "2", "y", "Ġ", "Â½"]
    assert tok.convert_ids_to_tokens(tok.encode(" ½")) == ["Ġ", "Â½"]


def test_byte_spelling_is_gpt2s() -> None:
    from tokenizers import pre_tokenizers

    spelling = byte_spelling()
    assert sorted(spelling) == list(range(256)) and set(spelling.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert (spelling[ord(" ")], spelling[ord("\n")], spelling[ord("A")], spelling[0xFF]) == ("Ġ", "Ċ", "A", "ÿ")


def _block_torch(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # find_spec("torch") is None, `import torch` fails


def test_load_tokenizer_needs_no_torch(monkeypatch) -> None:
    chat = "<|im_start|>user\nHi<|im_end|>"
    want = load_tokenizer("embedded").encode(chat)
    _block_torch(monkeypatch)
    tok = load_tokenizer.__wrapped__("embedded")
    assert tok.name_or_path == str(embedded_gguf_path()) and tok.encode(chat) == want == [1, 4093, 198, 26843, 2]


@pytest.mark.parametrize("key,value", [("tokenizer.ggml.model", "llama"), ("tokenizer.ggml.pre", "made-up")])
def test_unsupported_gguf_tokenizer_is_refused_without_torch(tmp_path, monkeypatch, key, value) -> None:
    path = tmp_path / "tok.gguf"
    _tokenizer_gguf(path, {key: value})
    _block_torch(monkeypatch)
    with pytest.raises(CheckpointError, match=rf"{key}='{value}'.*install torch"):
        load_tokenizer.__wrapped__(str(path))


def test_unsupported_gguf_tokenizer_goes_to_transformers_with_torch(tmp_path) -> None:
    path = tmp_path / "tok.gguf"
    _tokenizer_gguf(path, {"tokenizer.ggml.model": "llama"})
    ref = _transformers_gguf_tokenizer(path)
    tok = load_tokenizer.__wrapped__(str(path))
    assert type(tok) is type(ref) and tok.encode(TEXTS[0]) == ref.encode(TEXTS[0])
