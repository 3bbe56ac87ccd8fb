"""Byte-level BPE tokenizers built from a GGUF file's metadata with the `tokenizers` package (no torch).

A GGUF with `tokenizer.ggml.model` "gpt2" (SmolLM, Llama-3, Qwen) stores its vocabulary
(`tokens`, in GPT-2's byte-to-unicode spelling), BPE `merges` ("a b"), `token_type` (llama.cpp's
3 = control, 4 = user-defined: matched whole in the text), the bos / eos / unknown / padding ids,
`add_bos_token` / `add_eos_token` and `tokenizer.chat_template`. `tokenizer.ggml.pre` names, in
llama.cpp's words, how the text is split into words before BPE (`_SPLITS`). "smollm" is SmolLM2's
tokenizer.json split (each numeric character alone, then GPT-2's regex), as llama.cpp applies it;
transformers' GGUF reader leaves out the digit step, so its ids differ where a space precedes a
non-ASCII numeric character (" ½": 2 of the 303,415 tokens of wikitext-2 test). Other models
(SentencePiece "llama", "t5", ...) are not built here (`unsupported_gguf_tokenizer`).
"""

from __future__ import annotations

from functools import lru_cache

BYTE_LEVEL_MODEL = "gpt2"
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types matched whole in the text

# Word splits before the byte-level BPE, by `tokenizer.ggml.pre`: None is GPT-2's own regex (inside
# `ByteLevel`); "digits" puts every digit in a word of its own first, then GPT-2's regex.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS: dict[str, str | None] = {
    "default": None, "gpt-2": None,
    "smollm": "digits", "starcoder": "digits",
    "llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}


@lru_cache(maxsize=1)
def byte_spelling() -> dict[int, str]:
    """GPT-2's byte -> printable character map: printable Latin-1 bytes stand for themselves, the
    other 68 bytes take the characters from U+0100 on, in byte order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in kept]
    return {**{b: chr(b) for b in kept}, **{b: chr(256 + i) for i, b in enumerate(moved)}}


def _meta(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def unsupported_gguf_tokenizer(reader) -> str | None:
    """Why this module cannot build the file's tokenizer ("tokenizer.ggml.model='llama'"), or None."""
    model = _meta(reader, "tokenizer.ggml.model")
    if model != BYTE_LEVEL_MODEL:
        return f"tokenizer.ggml.model={model!r} (built here: {BYTE_LEVEL_MODEL!r}, byte-level BPE)"
    pre = _meta(reader, "tokenizer.ggml.pre", "default")
    if pre not in _SPLITS:
        return f"tokenizer.ggml.pre={pre!r} (known word splits: {', '.join(sorted(_SPLITS))})"
    return None


def _pre_tokenizer(pre: str):
    from tokenizers import Regex, pre_tokenizers

    split = _SPLITS[pre]
    if split is None:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if split == "digits":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def gguf_tokenizer(reader, name: str = ""):
    """A transformers `PreTrainedTokenizerFast` of a byte-level BPE GGUF (`unsupported_gguf_tokenizer` is None).

    `reader` is a `gguf.GGUFReader`; `name` becomes the tokenizer's `name_or_path`.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    tokens = _meta(reader, "tokenizer.ggml.tokens")
    alphabet = set(byte_spelling().values())
    spelled = [t if set(t) <= alphabet else "".join(byte_spelling()[b] for b in t.encode("utf-8")) for t in tokens]
    merges = [tuple(m.split(" ")) for m in _meta(reader, "tokenizer.ggml.merges", [])]
    backend = Tokenizer(models.BPE({t: i for i, t in enumerate(spelled)}, merges, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = _pre_tokenizer(_meta(reader, "tokenizer.ggml.pre", "default"))
    backend.decoder = decoders.ByteLevel()
    # whole-text tokens spelled outside the byte alphabet are left out, as their id has no spelling here
    types = _meta(reader, "tokenizer.ggml.token_type", [])
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t, kind in zip(tokens, types) if kind == _CONTROL and set(t) <= alphabet])
    backend.add_tokens([AddedToken(t, normalized=False, special=False)
                        for t, kind in zip(tokens, types) if kind == _USER_DEFINED and set(t) <= alphabet])
    special = {role: tokens[int(i)] for role, key in (("bos_token", "bos"), ("eos_token", "eos"),
                                                        ("unk_token", "unknown"), ("pad_token", "padding"))
               if (i := _meta(reader, f"tokenizer.ggml.{key}_token_id")) is not None}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, name_or_path=name, chat_template=_meta(reader, "tokenizer.chat_template"),
        add_bos_token=bool(_meta(reader, "tokenizer.ggml.add_bos_token", False)),
        add_eos_token=bool(_meta(reader, "tokenizer.ggml.add_eos_token", False)), **special)
