"""A SIGKILLed run resumes to the exact loss sequence; a non-finite loss stops with the last good checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BASE = ["train.progress=false", "train.tensorboard=false", "data.batch_size=2", "data.seq_len=64"]


def _cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "train.py", "--config", "configs/train_tiny.yaml", f"train.output_dir={out}", *BASE, *extra]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def _losses(out: Path) -> tuple[list[int], list[float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows], [r["loss"] for r in rows]


def _checkpoints(out: Path) -> list[int]:
    return sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())


def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path) -> None:
    steps = ["train.steps=30", "train.save_every=4", "train.keep_checkpoints=2"]
    full = _run(_cmd(tmp_path / "full", *steps))
    assert full.returncode == 0, full.stderr[-4000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(out, *steps), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 10:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = _checkpoints(out)
    assert saved and saved[-1] < 30
    fresh = _run(_cmd(out, *steps))  # without --resume the run refuses to overwrite
    assert fresh.returncode == 2 and "pass --resume" in fresh.stderr

    resumed = _run(_cmd(out, *steps, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    steps_seen, losses = _losses(out)
    assert steps_seen == list(range(1, 31))
    np.testing.assert_allclose(losses, _losses(tmp_path / "full")[1], rtol=1e-6)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path) -> None:
    proc = _run(_cmd(tmp_path, "train.steps=5", "train.save_every=1", "train.learning_rate=1e30",
                     "train.warmup_fraction=0", "train.grad_clip=0", "train.skip_grad_norm=0"))
    assert proc.returncode == 2
    assert "non-finite loss" in proc.stderr and "last good checkpoint is step" in proc.stderr
    saved = _checkpoints(tmp_path)
    assert saved and saved[-1] < 5
    steps_seen, losses = _losses(tmp_path)
    assert all(np.isfinite(losses)) and steps_seen[-1] == saved[-1]


def test_export_writes_the_newest_checkpoints_predictor(tmp_path) -> None:
    import jax

    from butler_jax.weights.flax_checkpoint import load_tree

    steps = ["train.steps=8", "train.save_every=4"]
    assert (done := _run(_cmd(tmp_path, *steps))).returncode == 0, done.stderr[-4000:]
    changed = _run(_cmd(tmp_path, *steps, "train.learning_rate=0.5", "--export"))
    assert changed.returncode == 2 and "train.learning_rate" in changed.stderr  # the resume checks apply
    exported = _run(_cmd(tmp_path, *steps, "--export"))
    assert exported.returncode == 0, exported.stderr[-4000:]
    assert json.loads(exported.stdout.strip().splitlines()[-1])["steps"] == 8
    final, meta_final = load_tree(tmp_path / "predictor", "predictor")
    again, meta = load_tree(tmp_path / "predictor-step8", "predictor")
    assert meta["train_step"] == meta_final["train_step"] == 8
    for a, b in zip(jax.tree_util.tree_leaves(final), jax.tree_util.tree_leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    _, losses = _losses(tmp_path)
    assert len(losses) == 8  # exporting trained nothing
