"""Append-only JSONL results with resume: a record is skipped when its key (settings hash included) is stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from butler_jax.jsonl import append_record, drop_partial_tail, read_jsonl

# `settings`: hash of every setting that changes a result (see eval/provenance.settings_key)
KEY_FIELDS = ("method", "budget", "task", "sample", "settings")


class ResultStore:
    """One JSON object per line; each write is flushed and fsynced so a crash loses at most one line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        drop_partial_tail(self.path)
        self._done: set[tuple] = {self.key(r) for r in self.records()}

    @staticmethod
    def key(record: dict[str, Any]) -> tuple:
        return tuple(str(record.get(k)) for k in KEY_FIELDS)

    def records(self) -> Iterator[dict[str, Any]]:
        yield from read_jsonl(self.path)

    def has(self, **key: Any) -> bool:
        return self.key(key) in self._done

    def add(self, record: dict[str, Any]) -> None:
        append_record(self.path, record)
        self._done.add(self.key(record))
