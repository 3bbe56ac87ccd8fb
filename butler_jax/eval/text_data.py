"""Local text for perplexity: wikitext-2 raw (shipped), PG-19 books, text/JSONL/parquet files, `datasets`;
and fixed-shape evaluation windows with loss masks.

Sources accepted by `load_documents`:
  "wikitext2" / "wikitext2:test" / "wikitext2:valid"  the copy shipped in butler_jax/eval/data
  "pg19:<folder>"                                       Project Gutenberg books, headers/footers removed
  "hf:<name>[:<config>[:<split>]]"                      through `datasets` (needs the package and the hub)
  a .txt file, a .jsonl file (field "text"), a .parquet file (column "text", needs pyarrow),
  or a folder of .txt files (one document each, sorted by path)
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from butler_jax.eval.haystack import strip_gutenberg

DATA_DIR = Path(__file__).resolve().parent / "data"
WIKITEXT2_SPLITS = {"test": "wiki.test.raw", "valid": "wiki.valid.raw"}


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


def wikitext2(split: str = "test") -> str:
    """The raw text of the shipped WikiText-2 raw split ("test" or "valid")."""
    if split not in WIKITEXT2_SPLITS:
        raise ValueError(f"wikitext2 split {split!r} is not shipped; choose one of {', '.join(WIKITEXT2_SPLITS)}")
    return (DATA_DIR / "wikitext-2-raw" / WIKITEXT2_SPLITS[split]).read_text(encoding="utf-8")


def _text_files(folder: Path) -> list[Path]:
    files = sorted(folder.rglob("*.txt"))
    if not files:
        raise FileNotFoundError(f"folder {folder} holds no .txt files; pass a folder of .txt documents")
    return files


def pg19_books(folder: str | Path) -> list[str]:
    """Every .txt book in `folder` (sorted), with the Project Gutenberg header and footer removed."""
    return [strip_gutenberg(f.read_text(encoding="utf-8", errors="replace")) for f in _text_files(Path(folder))]


def _jsonl(path: Path) -> list[str]:
    docs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ValueError(f"{path} line {n}: every JSONL row needs a string field 'text'")
            docs.append(row["text"])
    return docs


def _parquet(path: Path) -> list[str]:
    if importlib.util.find_spec("pyarrow") is None:
        raise ModuleNotFoundError(f"reading {path} needs pyarrow: pip install pyarrow (or convert it to JSONL)")
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["text"])
    return [t for t in table.column("text").to_pylist() if t]


def _hub(spec: str) -> list[str]:
    name, config, split = (spec.split(":") + [None, None])[:3]
    fix = "pass a local file or folder instead (see butler_jax.eval.text_data)"
    if importlib.util.find_spec("datasets") is None:
        raise ModuleNotFoundError(f"hf:{spec} needs the `datasets` package (pip install datasets) and hub access; "
                                  f"or {fix}")
    import datasets

    try:
        rows = datasets.load_dataset(name, config or None, split=split or "test")
    except Exception as exc:  # offline hub, unknown name or split
        raise FileNotFoundError(f"could not load hf:{spec} ({type(exc).__name__}: {exc}); {fix}") from exc
    return [t for t in rows["text"] if t]


def load_documents(source: str | Path) -> list[str]:
    """The documents of `source` (see the module docstring for the accepted forms)."""
    spec = str(source)
    if spec == "wikitext2" or spec.startswith("wikitext2:"):
        return [wikitext2(spec.partition(":")[2] or "test")]
    if spec.startswith("pg19:"):
        return pg19_books(spec[len("pg19:"):])
    if spec.startswith("hf:"):
        return _hub(spec[len("hf:"):])
    path = Path(spec).expanduser()
    if path.is_dir():
        return [f.read_text(encoding="utf-8", errors="replace") for f in _text_files(path)]
    if not path.is_file():
        raise FileNotFoundError(f"text source {spec!r} is neither a file, a folder, 'wikitext2[:split]', "
                                "'pg19:<folder>' nor 'hf:<name>[:config[:split]]'")
    if path.suffix == ".jsonl":
        return _jsonl(path)
    if path.suffix == ".parquet":
        return _parquet(path)
    return [path.read_text(encoding="utf-8", errors="replace")]


@dataclass(frozen=True)
class EvalWindows:
    """Fixed-shape windows over one token stream: `targets[i, j]` is the token after `inputs[i, j]`, and
    `loss_mask[i, j]` marks the targets to score. Every target token is scored exactly once."""

    inputs: np.ndarray  # int32 [N, context]
    targets: np.ndarray  # int32 [N, context]
    loss_mask: np.ndarray  # bool [N, context]

    @property
    def num_scored(self) -> int:
        return int(self.loss_mask.sum())


def token_windows(token_ids: np.ndarray | list[int], context: int, stride: int | None = None,
                  pad_id: int = 0, max_windows: int | None = None) -> EvalWindows:
    """Sliding windows of `context` tokens every `stride` tokens (default: `context`, no overlap).

    A window after the first scores only its targets not scored before (its last `stride`
    positions), so overlapping windows give each scored token `context - stride` tokens of history.
    The last window is padded with `pad_id` (masked out). `max_windows` keeps the first windows only.
    """
    ids = np.asarray(token_ids, np.int32)
    stride = context if stride is None else stride
    if not 0 < stride <= context:
        raise ValueError(f"stride must be in 1..context ({context}), got {stride}")
    if ids.ndim != 1 or len(ids) < 2:
        raise ValueError(f"need a 1-D stream of at least 2 tokens, got shape {ids.shape}")
    n_targets = len(ids) - 1
    starts = [0] + list(range(stride, max(n_targets - context + stride, 1), stride))
    starts = starts[:max_windows] if max_windows else starts
    inputs = np.full((len(starts), context), pad_id, np.int32)
    targets = np.full((len(starts), context), pad_id, np.int32)
    mask = np.zeros((len(starts), context), bool)
    for w, s in enumerate(starts):
        n = min(context, n_targets - s)
        inputs[w, :n], targets[w, :n] = ids[s:s + n], ids[s + 1:s + 1 + n]
        mask[w, (0 if w == 0 else context - stride):n] = True
    return EvalWindows(inputs, targets, mask)


def document_windows(tokenizer: Tokenizer, documents: list[str], context: int, stride: int | None = None,
                     separator: str = "\n\n", max_windows: int | None = None, pad_id: int = 0) -> EvalWindows:
    """Tokenize `documents` joined by `separator` as one stream and cut it into evaluation windows."""
    return token_windows(tokenizer.encode(separator.join(documents)), context, stride, pad_id, max_windows)
