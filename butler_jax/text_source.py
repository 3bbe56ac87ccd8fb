"""One text-source layer for training and evaluation: one source syntax, documents as a stream.

A source is one of
  "wikitext2" / "wikitext2:test" / "wikitext2:valid"  the WikiText-2 raw split shipped in butler_jax/eval/data
  "hf:<name>[:<config>[:<split>]]"                      a Hugging Face dataset, streamed through `datasets`
  a file: .txt / .raw / .md (one document; Project Gutenberg header and footer removed),
          .jsonl (one document per record, field `text_field`), .parquet (one per row, column `text_field`)
  a folder: every such file under it, sorted by path (README.md and dot-files skipped)
"pg19:<folder>" is accepted as an alias of the folder. `read_documents` yields documents lazily;
`take_tokens` stops reading once a token cap is reached, so a large hub source is never read whole.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from butler_jax.config import ConfigError
from butler_jax.errors import InputError

DATA_DIR = Path(__file__).resolve().parent / "eval" / "data"
WIKITEXT2_SPLITS = {"test": "wiki.test.raw", "valid": "wiki.valid.raw"}
TEXT_SUFFIXES = (".txt", ".raw", ".md")
SUFFIXES = TEXT_SUFFIXES + (".jsonl", ".parquet")
_GUTENBERG_START = re.compile(r"\*\*\*\s*START OF.*?\*\*\*", re.S | re.I)
_GUTENBERG_END = re.compile(r"\*\*\*\s*END OF", re.I)


class TextSourceMissing(ConfigError, FileNotFoundError):
    """A text source names a file, folder or split that does not exist."""


def strip_gutenberg(text: str) -> str:
    """Text between Project Gutenberg's START / END markers (unchanged when there is no START marker)."""
    start = _GUTENBERG_START.search(text)
    if start is None:
        return text
    end = _GUTENBERG_END.search(text, start.end())
    return text[start.end(): end.start() if end else len(text)].strip()


def wikitext2(split: str = "test") -> str:
    """The raw text of the shipped WikiText-2 raw split ("test" or "valid")."""
    if split not in WIKITEXT2_SPLITS:
        raise TextSourceMissing(f"wikitext2 split {split!r} is not shipped; choose one of {', '.join(WIKITEXT2_SPLITS)}")
    return (DATA_DIR / "wikitext-2-raw" / WIKITEXT2_SPLITS[split]).read_text(encoding="utf-8")


def _read_utf8(path: Path) -> str:
    """A text file's contents (BOM dropped); InputError naming the file when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path.name} is not UTF-8 text ({exc.reason} at byte {exc.start}; {path})",
                         fix="convert it to UTF-8") from None


def _jsonl(path: Path, field: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{n} is not a JSON record ({exc.msg})", fix="fix or remove that line") from None
            if not isinstance(row, dict) or not isinstance(row.get(field), str):
                raise ConfigError(f"{path} line {n}: every JSONL row needs a string field {field!r}"
                                  + (f" (keys: {sorted(row)})" if isinstance(row, dict) else ""))
            yield row[field]


def _parquet(path: Path, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ModuleNotFoundError(f"reading {path} needs pyarrow: pip install pyarrow (or convert it to JSONL)") from None
    table = pq.read_table(path)
    if field not in table.column_names:
        raise ConfigError(f"{path} has no column {field!r} (columns: {table.column_names})")
    yield from (str(t) for t in table.column(field).to_pylist() if t)


def _file(path: Path, field: str) -> Iterator[str]:
    if path.suffix == ".jsonl":
        yield from _jsonl(path, field)
    elif path.suffix == ".parquet":
        yield from _parquet(path, field)
    elif path.suffix in TEXT_SUFFIXES:
        yield strip_gutenberg(_read_utf8(path).replace("\r\n", "\n"))
    else:
        raise ConfigError(f"text source {path} has an unsupported suffix; use one of {list(SUFFIXES)}")


def _hub(spec: str, field: str, split: str) -> Iterator[str]:
    name, config, own_split = (spec.split(":") + [None, None])[:3]
    try:
        import datasets
    except ImportError:
        raise ModuleNotFoundError(f"hf:{spec} needs the `datasets` package (pip install datasets) and hub access; "
                                  "or give a local file or folder") from None
    try:
        for row in datasets.load_dataset(name, config or None, split=own_split or split, streaming=True):
            if row[field]:
                yield str(row[field])
    except Exception as exc:  # hub unreachable, unknown name, split or column
        raise ConfigError(f"could not read hf:{spec} split {own_split or split!r} column {field!r} "
                          f"({type(exc).__name__}: {exc}); without the hub give local files") from exc


def read_documents(source: str | Path, text_field: str = "text", hf_split: str = "train",
                   root: Path | None = None) -> Iterator[str]:
    """Documents of one source (module docstring), lazily. `hf_split`: the split when the hub source
    names none; `root`: where relative paths that do not exist from the working directory are looked up."""
    spec = str(source)
    if spec == "wikitext2" or spec.startswith("wikitext2:"):
        yield wikitext2(spec.partition(":")[2] or "test")
        return
    if spec.startswith("hf:"):
        yield from _hub(spec[3:], text_field, hf_split)
        return
    path = Path(spec[len("pg19:"):] if spec.startswith("pg19:") else spec).expanduser()
    if not path.exists() and root is not None and not path.is_absolute():
        path = root / path
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                       and p.suffix in SUFFIXES and p.name != "README.md")
        if not files:
            raise TextSourceMissing(f"text source folder {path} holds no {'/'.join(SUFFIXES)} files")
        for f in files:
            yield from _file(f, text_field)
    elif path.is_file():
        yield from _file(path, text_field)
    else:
        raise TextSourceMissing(f"text source {spec!r} does not exist (looked at {path}): it is neither a file, "
                                "a folder, 'wikitext2[:split]' nor 'hf:<name>[:config[:split]]'")


def take_tokens(documents: Iterable[str], encode: Callable[[Sequence[str]], list[list[int]]],
                max_tokens: int | None) -> list[list[int]]:
    """Token ids of `documents` in order, reading no further once `max_tokens` are collected (the last
    document is cut); `max_tokens=None` takes every document."""
    out: list[list[int]] = []
    total = 0
    for doc in documents:
        if not doc.strip():
            continue
        ids = encode([doc])[0]
        if max_tokens is not None and total + len(ids) >= max_tokens:
            out.append(ids[: max_tokens - total])
            break
        out.append(ids)
        total += len(ids)
    return out
