"""Tokenizers (HF `AutoTokenizer`) from a model directory, a hub id, a GGUF file or the embedded model."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from butler_jax.errors import CheckpointError
from butler_jax.weights.embedded import embedded_gguf_path


@lru_cache(maxsize=4)
def load_tokenizer(source: str):
    """A transformers tokenizer for `source` ("embedded", a .gguf path, a directory or a hub id)."""
    import transformers

    transformers.logging.set_verbosity_error()
    from transformers import AutoTokenizer

    if source == "embedded":
        source = str(embedded_gguf_path())
    path = Path(source).expanduser()
    try:
        if path.suffix == ".gguf":
            if not path.is_file():
                raise CheckpointError(f"GGUF file {source!r} does not exist")
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
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
