"""Mixed row lengths: equal tokens per step, lengths in turn, deterministic batches, a real run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from butler_jax.config import ConfigError
from butler_jax.train.config import check_mixed_lengths
from butler_jax.train.lengths import MixedLengthData

REPO = Path(__file__).resolve().parents[1]


def test_steps_take_lengths_in_turn_with_equal_tokens() -> None:
    tokens = np.random.default_rng(0).integers(0, 256, 5000).astype(np.int32)
    data = MixedLengthData(tokens, (16, 32, 64), tokens_per_step=128, seed=3)
    shapes = [data.batch(s).shape for s in range(6)]
    assert shapes == [(8, 16), (4, 32), (2, 64)] * 2
    again = MixedLengthData(tokens, (16, 32, 64), tokens_per_step=128, seed=3)
    for s in range(12):
        np.testing.assert_array_equal(data.batch(s), again.batch(s))
    # every row is a contiguous window of the token stream at a multiple of its length
    for s in range(6):
        for row in data.batch(s):
            L = len(row)
            starts = [i for i in range(0, len(tokens) - L + 1, L) if np.array_equal(tokens[i:i + L], row)]
            assert starts
    assert data.fingerprint() != MixedLengthData(tokens, (16, 32, 64), 128, seed=4).fingerprint()


@pytest.mark.parametrize("lengths, message", [
    ((40,), "divide"), ((256,), "exceeds data.seq_len"), ((1,), ">= 2"), ((24,), "query_chunk"),
])
def test_bad_lengths_name_the_value(lengths, message) -> None:
    with pytest.raises(ConfigError, match=message):
        check_mixed_lengths(lengths, seq_len=96, batch_size=1, query_chunk=16)


def test_training_run_with_mixed_lengths(tmp_path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", "--config", "configs/train_tiny.yaml", f"train.output_dir={out}",
           "train.progress=false", "train.tensorboard=false", "train.steps=4", "train.query_chunk=32",
           "data.seq_len=128", "data.batch_size=2", "data.mixed_lengths=[64,128]", "train.loss_rows=64"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in rows)
