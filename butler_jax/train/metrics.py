"""Metric sinks of a training run: JSONL rows and TensorBoard scalars (process 0 only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from butler_jax.jsonl import drop_partial_tail, read_jsonl, rewrite_jsonl, write_record


class MetricsWriter:
    """Appends one JSON object per logged step to `metrics.jsonl` and mirrors scalars to TensorBoard."""

    def __init__(self, directory: Path, tensorboard: bool, resume_step: int | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "metrics.jsonl"
        if resume_step is not None:
            self._truncate_after(resume_step)
        elif self.path.exists():
            self.path.unlink()
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(directory / "tensorboard"), purge_step=resume_step)

    def _truncate_after(self, step: int) -> None:
        """Drop rows a killed run logged after its last checkpoint (they are replayed on resume)."""
        if not self.path.exists():
            return
        drop_partial_tail(self.path)
        rewrite_jsonl(self.path, [r for r in read_jsonl(self.path) if r["step"] <= step])

    def write(self, row: dict[str, Any]) -> None:
        write_record(self._file, row)
        if self._tb is not None:
            for key, value in row.items():
                if key == "step":
                    continue
                if isinstance(value, dict):  # per-layer values keyed by layer index
                    for layer, v in value.items():
                        self._tb.add_scalar(f"{key}/layer_{layer}", v, row["step"])
                else:
                    self._tb.add_scalar(key, value, row["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
