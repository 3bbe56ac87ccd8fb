"""Append-only JSONL files (eval samples, training metrics) that survive a crash mid-write.

A record is one line written with a single `write` and flushed, so a process killed mid-write
leaves at most a partial last line without its newline. `drop_partial_tail` detects it, says so
on stderr and cuts it off before anything is appended (else the next record would be glued onto
it and both lost); `read_jsonl` ignores it. A damaged line elsewhere is not a crash artefact:
it raises `InputError` naming the file and line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Any, Iterable

from butler_jax.errors import InputError


def _complete_part(data: bytes) -> bytes:
    """`data` up to and including its last newline (what a crash cannot have cut)."""
    return data[: data.rfind(b"\n") + 1]


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of the complete lines of `path` ([] when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(_complete_part(path.read_bytes()).decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number} is not a JSON record ({exc.msg})", value=line[:80],
                             fix="delete that line (or the file, to start over)") from None
    return records


def drop_partial_tail(path: str | Path) -> int:
    """Cut a partial last line left by an interrupted write, reporting it; returns the bytes dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    data = path.read_bytes()
    keep = len(_complete_part(data))
    if keep == len(data):
        return 0
    with path.open("r+b") as handle:
        handle.truncate(keep)
        os.fsync(handle.fileno())
    print(f"warning: {path}: dropped a partial last line ({len(data) - keep} bytes) left by an interrupted write",
          file=sys.stderr)
    return len(data) - keep


def write_record(handle: IO[str], record: dict[str, Any], sync: bool = False) -> None:
    """Append one record as one line to an open text handle, flushed (and fsynced when `sync`)."""
    handle.write(json.dumps(record) + "\n")
    handle.flush()
    if sync:
        os.fsync(handle.fileno())


def append_record(path: str | Path, record: dict[str, Any]) -> None:
    """Append one record to `path`, fsynced (a crash loses at most this line)."""
    with Path(path).open("a", encoding="utf-8") as handle:
        write_record(handle, record, sync=True)


def rewrite_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace `path` by `records` atomically (a temporary file renamed over it)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
