"""Crash safety: a JSONL file cut mid-line (as a kill -9 mid-write leaves it) and junk checkpoints.

Each test cuts the file of a finished run the way a crash would, reruns, and compares with an
uninterrupted run: identical results, no record lost or duplicated.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from butler_jax.errors import InputError
from butler_jax.jsonl import drop_partial_tail, read_jsonl
from tests.test_cli_errors import TRAIN_BASE

# ----------------------------------------------------------------------------- the JSONL module


def test_partial_last_line_is_dropped_and_reported(tmp_path, capsys) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]  # reading alone never crashes on it
    assert drop_partial_tail(path) == len('{"a": 3, "b"')
    assert "dropped a partial last line" in capsys.readouterr().err
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n' and drop_partial_tail(path) == 0


def test_damaged_middle_line_names_file_and_line(tmp_path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 3}\n')
    with pytest.raises(InputError, match=r"x\.jsonl:2 is not a JSON record"):
        read_jsonl(path)


# ----------------------------------------------------------------------------- evaluation samples.jsonl


def _tasks() -> list:
    """Two deterministic tasks (perplexity-like and score-like) with 6 samples each."""
    samples = [SimpleNamespace(sample=f"w{i}") for i in range(6)]

    def ppl(policy, policy_params, items):
        return [{"nll_sum": 1.5 + int(s.sample[1:]) / 7, "count": 64, "sparsity": 0.5} for s in items]

    def score(policy, policy_params, items):
        return [{"score": float(int(s.sample[1:]) % 2), "metric": "accuracy"} for s in items]

    settings = {"task": "toy"}  # what changes a result (the runner hashes it into each sample's key)
    return [("ppl:toy", samples, ppl, ["fixed_50pc"], 1, settings), ("toy", samples, score, ["fixed_50pc"], 2, settings)]


def _evaluate(out: Path) -> list[dict]:
    from butler_jax.config import ModelConfig
    from butler_jax.eval.config import EvalConfig
    from butler_jax.eval.runner import run_tasks
    from butler_jax.sparsity import SparsityConfig

    cfg = EvalConfig(methods=["dense", "streamingllm"], output_dir=str(out))
    return run_tasks(_tasks(), cfg, SparsityConfig(n_window=16), ModelConfig(num_hidden_layers=2))


def _records(out: Path) -> Counter:
    rows = read_jsonl(out / "samples.jsonl")
    return Counter(json.dumps({k: v for k, v in r.items() if k != "seconds"}, sort_keys=True) for r in rows)


def test_eval_rerun_after_a_cut_samples_file_matches_uninterrupted(tmp_path, capsys) -> None:
    full = tmp_path / "full"
    _evaluate(full)
    cut = tmp_path / "cut"
    _evaluate(cut)
    data = (cut / "samples.jsonl").read_bytes()
    lines = data.splitlines(keepends=True)
    keep = b"".join(lines[:9])  # a crash while writing the 10th record: half of it on disk
    (cut / "samples.jsonl").write_bytes(keep + lines[9][: len(lines[9]) // 2])
    capsys.readouterr()
    _evaluate(cut)
    assert "dropped a partial last line" in capsys.readouterr().err
    assert _records(cut) == _records(full)
    assert sum(_records(cut).values()) == 2 * 2 * 6  # methods x tasks x samples, none twice
    assert (cut / "summary.csv").read_bytes() == (full / "summary.csv").read_bytes()


# ----------------------------------------------------------------------------- training metrics.jsonl


def _train(out: Path, *extra: str) -> int:
    import train
    from butler_jax.cli import run_cli

    return run_cli(train.main, [*TRAIN_BASE, "train.steps=12", "train.save_every=4", "train.keep_checkpoints=2",
                                f"train.output_dir={out}", *extra])


def _metrics(out: Path) -> tuple[list[int], list[float]]:
    rows = read_jsonl(out / "metrics.jsonl")
    return [r["step"] for r in rows], [r["loss"] for r in rows]


def test_train_resume_after_cut_metrics_and_junk_checkpoint_matches_uninterrupted(tmp_path, capsys) -> None:
    full = tmp_path / "full"
    assert _train(full) == 0
    out = tmp_path / "crashed"
    assert _train(out) == 0
    # the state a kill -9 during step 11's metrics write leaves: checkpoint 8 the newest good one,
    # rows 1-10 complete and half of row 11; plus a junk step folder that is no checkpoint at all
    shutil.rmtree(out / "checkpoints" / "12")
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text("".join(lines[:10]) + lines[10][:40])
    (out / "checkpoints" / "500").mkdir()
    capsys.readouterr()
    assert _train(out, "--resume") == 0
    err = capsys.readouterr().err
    assert "dropped a partial last line" in err
    assert "resuming from step 8; skipped checkpoints that do not restore: step 500" in err
    assert (out / "checkpoints" / "500.unrestorable").is_dir()
    steps, losses = _metrics(out)
    assert steps == list(range(1, 13))
    np.testing.assert_allclose(losses, _metrics(full)[1], rtol=1e-6)
