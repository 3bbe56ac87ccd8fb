"""Training data pipeline and config validation (fast, no model)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from butler_jax.config import ConfigError, ModelConfig, from_dict
from butler_jax.train.config import DataConfig, TrainConfig
from butler_jax.train.data import PackedData, build_data, pack, read_documents, strip_gutenberg
from butler_jax.train.mesh import fsdp_spec

BYTES_MODEL = ModelConfig(vocab_size=256, hidden_size=64, num_attention_heads=4, num_key_value_heads=2)


def test_gutenberg_books_lose_header_and_license() -> None:
    cfg = DataConfig(sources=("butler_jax/train/data/pg19-test-books",))
    books = list(read_documents(cfg.sources[0], cfg))
    assert len(books) == 4
    for book in books:
        assert "*** START OF" not in book and "*** END OF" not in book
        assert "Project Gutenberg License" not in book and len(book) > 200_000
    assert strip_gutenberg("plain text") == "plain text"


def test_jsonl_and_text_sources_pack_with_eos(tmp_path) -> None:
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ["ab", "cde"]) + "\n")
    (tmp_path / "b.txt").write_text("fgh")
    cfg = DataConfig(sources=(str(tmp_path),), tokenizer="bytes", seq_len=4, batch_size=1)
    data = build_data(cfg, BYTES_MODEL)
    eos = BYTES_MODEL.eos_token_id
    flat = [*b"ab", eos, *b"cde", eos, *b"fgh", eos]
    np.testing.assert_array_equal(data.sequences, np.reshape(flat[:8], (2, 4)))  # 11 tokens: tail dropped


def test_batches_are_a_pure_function_of_step() -> None:
    seqs = pack(np.arange(10 * 8, dtype=np.int32), 8)
    a, b = PackedData(seqs, 3, seed=7), PackedData(seqs, 3, seed=7)
    steps = [a.batch(s) for s in range(9)]  # 27 sequences: crosses two epoch boundaries
    np.testing.assert_array_equal(b.batch(5), steps[5])
    first_epoch = np.concatenate(steps)[:10, 0] // 8
    assert sorted(first_epoch) == list(range(10))  # every sequence once per epoch
    assert not np.array_equal(PackedData(seqs, 3, seed=8).batch(0), steps[0])
    assert a.position(4) == (1, 2)


def test_bad_values_are_named_with_what_is_allowed() -> None:
    with pytest.raises(ConfigError, match=r"train.loss='l2'.*\['mse', 'kl'\]"):
        from_dict(TrainConfig, {"loss": "l2"}, "train")
    with pytest.raises(ConfigError, match="unknown key data.seqlen; allowed keys"):
        from_dict(DataConfig, {"seqlen": 5}, "data")
    with pytest.raises(ConfigError, match="does not exist"):
        list(read_documents("no/such/file.txt", DataConfig()))
    with pytest.raises(ConfigError, match="fewer than data.batch_size"):
        PackedData(np.zeros((2, 4), np.int32), 3, 0)


def test_fsdp_spec_shards_largest_divisible_axis() -> None:
    assert tuple(fsdp_spec((6, 16), 4)) == (None, "fsdp")
    assert tuple(fsdp_spec((16, 8), 4)) == ("fsdp", None)
    assert tuple(fsdp_spec((3, 5), 4)) == ()
    assert tuple(fsdp_spec((), 4)) == ()


def test_cli_rejects_a_bad_value_before_running() -> None:
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "train.py", "--config", "configs/train_tiny.yaml", "train.loss_region=upper"],
                          cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "train.loss_region='upper' is not allowed; choose one of ['causal', 'full']" in proc.stderr


def test_max_tokens_caps_each_source_and_stops_reading(tmp_path, files_read) -> None:
    from butler_jax.train.data import build_tokens

    (tmp_path / "one").mkdir()
    for name, text in [("a.txt", "abcdef"), ("b.txt", "ghij"), ("c.txt", "kl")]:
        (tmp_path / "one" / name).write_text(text)
    (tmp_path / "two.txt").write_text("mnopqrs")
    eos = BYTES_MODEL.eos_token_id
    cfg = DataConfig(sources=(str(tmp_path / "one"), str(tmp_path / "two.txt")), tokenizer="bytes", max_tokens=8)
    np.testing.assert_array_equal(build_tokens(cfg, BYTES_MODEL), [*b"abcdef", eos, *b"gh", eos, *b"mnopqrs", eos])
    assert files_read == ["a.txt", "b.txt", "two.txt"]  # c.txt never read: the cap was reached within b.txt
    uncapped = build_tokens(dataclasses.replace(cfg, max_tokens=None), BYTES_MODEL)
    assert len(uncapped) == 6 + 4 + 2 + 7 + 4
    for bad in (0, -5):
        with pytest.raises(ConfigError, match=f"data.max_tokens={bad} must be >= 1"):
            DataConfig(max_tokens=bad)
    assert from_dict(DataConfig, {"max_tokens": 1000}, "data").max_tokens == 1000
