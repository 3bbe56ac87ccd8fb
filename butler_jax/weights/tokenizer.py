"""Tokenizers from a model directory, a hub id, a GGUF file or the embedded model.

A byte-level BPE GGUF (SmolLM, Llama-3, Qwen; the embedded model) is built from its own metadata
without torch (`gguf_tokenizer.py`); other GGUF tokenizers (SentencePiece, ...) go through
transformers' GGUF reader, which imports torch; directories and hub ids through `AutoTokenizer`.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from butler_jax.errors import CheckpointError
from butler_jax.weights.embedded import embedded_gguf_path
from butler_jax.weights.gguf_file import open_gguf
from butler_jax.weights.gguf_tokenizer import gguf_tokenizer, unsupported_gguf_tokenizer


def _gguf(path: Path):
    """The tokenizer of a GGUF file: built here, or by transformers (torch) where this module cannot."""
    reader = open_gguf(path)
    unsupported = unsupported_gguf_tokenizer(reader)
    if unsupported is None:
        return gguf_tokenizer(reader, name=str(path))
    if importlib.util.find_spec("torch") is None:
        raise CheckpointError(
            f"the tokenizer of {str(path)!r} is built without torch only for byte-level BPE GGUF files",
            value=unsupported,
            fix="install torch (transformers' GGUF reader builds the others), or give the same model's tokenizer "
                "as a directory or hub id (data.tokenizer for training)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@lru_cache(maxsize=4)
def load_tokenizer(source: str):
    """A transformers tokenizer for `source` ("embedded", a .gguf path, a directory or a hub id)."""
    import transformers

    transformers.logging.set_verbosity_error()
    if source == "embedded":
        source = str(embedded_gguf_path())
    path = Path(source).expanduser()
    try:
        if path.suffix == ".gguf":
            return _gguf(path)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"could not load a tokenizer from {source!r} ({type(exc).__name__}: {exc}); pass a model "
            "directory with tokenizer files, a .gguf file, or a reachable hub id"
        ) from exc


def apply_chat_template(tokenizer, user_message: str, system: str | None = None) -> str:
    """The prompt string of one user turn, with the assistant turn opened."""
    if not getattr(tokenizer, "chat_template", None):
        return user_message
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user_message}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
