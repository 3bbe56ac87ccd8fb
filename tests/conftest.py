"""Shared fixtures: the embedded SmolLM2 model (float32), its tokenizer, wikitext text."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
WIKITEXT_TEST = REPO / "butler_jax" / "eval" / "data" / "wikitext-2-raw" / "wiki.test.raw"


@pytest.fixture(scope="session")
def smollm2():
    """(config, params, HF-named float32 state dict) of the embedded SmolLM2-135M."""
    from butler_jax.weights.embedded import embedded_gguf_path
    from butler_jax.weights.gguf_file import read_gguf_state_dict
    from butler_jax.weights.hf import cast_tree
    from butler_jax.weights.names import hf_state_dict_to_params

    cfg, state = read_gguf_state_dict(embedded_gguf_path())
    return cfg, cast_tree(hf_state_dict_to_params(state, cfg), "float32"), state


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from butler_jax.weights.tokenizer import load_tokenizer

    return load_tokenizer("embedded")


@pytest.fixture(scope="session")
def smollm2_tok():
    """Alias of smollm2_tokenizer (used by the evaluation-data tests)."""
    from butler_jax.weights.tokenizer import load_tokenizer

    return load_tokenizer("embedded")


@pytest.fixture(scope="session")
def wikitext_test_text() -> str:
    return WIKITEXT_TEST.read_text(encoding="utf-8")


@pytest.fixture
def files_read(monkeypatch) -> list[str]:
    """Names of the text files butler_jax/text_source.py opens from here on, in order."""
    from butler_jax import text_source

    names, real = [], text_source._file

    def logged(path, field):
        names.append(path.name)
        yield from real(path, field)
    monkeypatch.setattr(text_source, "_file", logged)
    return names
