"""Append-only JSONL results with resume: a record is skipped when its key (settings hash included) is stored."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

# `settings`: hash of every setting that changes a result (see eval/provenance.settings_key)
KEY_FIELDS = ("method", "budget", "task", "sample", "settings")


class ResultStore:
    """One JSON object per line; each write is flushed and fsynced so a crash loses at most one line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._done: set[tuple] = {self.key(r) for r in self.records()}

    @staticmethod
    def key(record: dict[str, Any]) -> tuple:
        return tuple(str(record.get(k)) for k in KEY_FIELDS)

    def records(self) -> Iterator[dict[str, Any]]:
        if not self.path.is_file():
            return
        with self.path.open() as handle:
            for line in handle:
                line = line.strip()
                if line:
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by a crash

    def has(self, **key: Any) -> bool:
        return self.key(key) in self._done

    def add(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._done.add(self.key(record))
