"""Data + FSDP sharded training on 8 simulated CPU devices gives the 1-device losses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _train(out: Path, devices: int, mesh_data: int) -> tuple[list[dict], dict]:
    """Run train.py in a fresh process seeing `devices` CPU devices -> (metric rows, summary)."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "train.py", "--config", "configs/train_tiny.yaml", f"train.output_dir={out}",
           "train.steps=3", f"train.mesh_data={mesh_data}", "train.mesh_fsdp=-1", "train.shard_frozen=true",
           "train.progress=false", "train.tensorboard=false", "data.batch_size=8", "data.seq_len=64"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, json.loads(proc.stdout.strip().splitlines()[-1])


def test_eight_devices_data_and_fsdp_match_one_device(tmp_path) -> None:
    one, one_summary = _train(tmp_path / "one", devices=1, mesh_data=1)
    eight, summary = _train(tmp_path / "eight", devices=8, mesh_data=2)
    assert one_summary["devices"] == 1 and summary["devices"] == 8
    assert summary["mesh"] == {"data": 2, "fsdp": 4}
    assert not summary["params_sharded"].startswith("0/")  # some predictor params really are split
    for key in ("loss", "accuracy", "grad_norm"):
        a, b = (np.array([r[key] for r in rows]) for rows in (one, eight))
        np.testing.assert_allclose(b, a, rtol=1e-5, err_msg=key)
    assert one[-1]["loss"] != one[0]["loss"]  # the steps did update the predictor
