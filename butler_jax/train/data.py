"""Training data: read documents, tokenise, pack into fixed-length sequences, shuffle by seed.

Documents are joined with the EOS token (as the paper's C4 pipeline) and cut into
non-overlapping `seq_len` windows (the last partial window is dropped). The order of windows is
a fresh permutation per epoch drawn from (seed, epoch), so the batch of any step is a pure
function of the step number: resuming at step s reads exactly what an uninterrupted run reads.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from butler_jax.config import ConfigError, ModelConfig
from butler_jax.errors import InputError
from butler_jax.train.config import DataConfig, resolve_path

TEXT_SUFFIXES = (".txt", ".raw", ".md")
_GUTENBERG_START = re.compile(r"\*\*\*\s*START OF.*?\*\*\*", re.S)
_GUTENBERG_END = re.compile(r"\*\*\*\s*END OF")


def strip_gutenberg(text: str) -> str:
    """Text between Project Gutenberg's START / END markers (unchanged when there are none)."""
    start = _GUTENBERG_START.search(text)
    if start is None:
        return text
    end = _GUTENBERG_END.search(text, start.end())
    return text[start.end(): end.start() if end else len(text)].strip()


def _read_text_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                         fix="convert it to UTF-8 or drop it from data.sources") from None
    return strip_gutenberg(text)


def _read_jsonl(path: Path, field: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{n} is not a JSON record ({exc.msg})", fix="fix or delete that line") from None
            if field not in record:
                raise ConfigError(f"{path}:{n} has no field {field!r}; set data.text_field (keys: {sorted(record)})")
            yield str(record[field])


def _read_parquet(path: Path, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"reading {path} needs pyarrow; run `pip install pyarrow`") from None
    table = pq.read_table(path)
    if field not in table.column_names:
        raise ConfigError(f"{path} has no column {field!r}; set data.text_field (columns: {table.column_names})")
    yield from (str(t) for t in table.column(field).to_pylist())


def _read_file(path: Path, field: str) -> Iterator[str]:
    if path.suffix == ".jsonl":
        yield from _read_jsonl(path, field)
    elif path.suffix == ".parquet":
        yield from _read_parquet(path, field)
    elif path.suffix in TEXT_SUFFIXES:
        yield _read_text_file(path)
    else:
        raise ConfigError(f"data source {path} has an unsupported suffix; use one of "
                          f"{list(TEXT_SUFFIXES) + ['.jsonl', '.parquet']}")


def _read_hf(spec: str, cfg: DataConfig) -> Iterator[str]:
    name, _, subset = spec.partition(":")
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"data source hf:{spec} needs the `datasets` package (pip install datasets), "
                          "or give local text / JSONL / parquet files") from None
    try:
        ds = datasets.load_dataset(name, subset or None, split=cfg.hf_split, streaming=True)
        for row in ds:
            yield str(row[cfg.text_field])
    except Exception as exc:  # hub unreachable, unknown name, missing column
        raise ConfigError(f"could not read Hugging Face dataset {spec!r} split {cfg.hf_split!r} "
                          f"({type(exc).__name__}: {exc}); without the hub use local files") from exc


def read_documents(source: str, cfg: DataConfig) -> Iterator[str]:
    """Documents of one source: a file, a folder (its files, sorted) or `hf:<name>[:<config>]`."""
    if source.startswith("hf:"):
        docs = _read_hf(source[3:], cfg)
    else:
        path = resolve_path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                           and p.suffix in TEXT_SUFFIXES + (".jsonl", ".parquet") and p.name != "README.md")
            if not files:
                raise ConfigError(f"data source folder {path} holds no .txt/.raw/.jsonl/.parquet files")
            docs = (d for f in files for d in _read_file(f, cfg.text_field))
        elif path.is_file():
            docs = _read_file(path, cfg.text_field)
        else:
            raise ConfigError(f"data source {source!r} does not exist (looked at {path}); "
                              "give a file, a folder or hf:<dataset name>")
    for n, doc in enumerate(docs):
        if cfg.max_documents is not None and n >= cfg.max_documents:
            return
        yield doc


Encoder = Callable[[Sequence[str]], list[list[int]]]


def make_encoder(cfg: DataConfig, model: ModelConfig) -> tuple[Encoder, int | None]:
    """(batch encoder without special tokens, EOS id used as the document separator)."""
    if cfg.tokenizer == "bytes":
        return (lambda docs: [list(d.encode("utf-8")) for d in docs]), model.eos_token_id
    from butler_jax.weights import load_tokenizer

    source = model.source if cfg.tokenizer == "model" else cfg.tokenizer
    if source == "random":
        raise ConfigError("model.source=random has no tokenizer; set data.tokenizer=bytes "
                          "(vocab 256) or a tokenizer source")
    tok = load_tokenizer(source)
    eos = tok.eos_token_id if tok.eos_token_id is not None else model.eos_token_id
    return (lambda docs: tok(list(docs), add_special_tokens=False)["input_ids"]), eos


def tokenize(docs: Sequence[str], encode: Encoder, eos: int | None) -> np.ndarray:
    """All documents' tokens concatenated, each followed by `eos` when given -> int32 [N]."""
    sep = [] if eos is None else [eos]
    ids = [t for doc in encode(docs) for t in (*doc, *sep)]
    return np.asarray(ids, np.int32)


def pack(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping windows [N // seq_len, seq_len] (the tail is dropped)."""
    n = len(tokens) // seq_len
    return tokens[: n * seq_len].reshape(n, seq_len)


class PackedData:
    """Packed sequences with a per-epoch seeded order; `batch(step)` is deterministic."""

    def __init__(self, sequences: np.ndarray, batch_size: int, seed: int) -> None:
        if len(sequences) < batch_size:
            raise ConfigError(f"the data holds {len(sequences)} sequences of {sequences.shape[1]} tokens, "
                              f"fewer than data.batch_size={batch_size}; add data or shorten data.seq_len")
        self.sequences = sequences
        self.batch_size = batch_size
        self.seed = seed
        self._orders: dict[int, np.ndarray] = {}

    def order(self, epoch: int) -> np.ndarray:
        """Permutation of sequence indices for one epoch."""
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.sequences))}
        return self._orders[epoch]

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, index within the epoch) of the first sequence of `step`'s batch."""
        first = step * self.batch_size
        return divmod(first, len(self.sequences))

    def batch(self, step: int) -> np.ndarray:
        """Tokens int32 [batch_size, seq_len] of training step `step` (0-based)."""
        n = len(self.sequences)
        idx = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        rows = [self.order(int(i // n))[i % n] for i in idx]
        return self.sequences[rows]

    def fingerprint(self) -> str:
        """Short hash of the packed tokens and the seed (a resumed run must see the same data)."""
        h = hashlib.sha1(self.sequences.tobytes())
        h.update(f"{self.sequences.shape}|{self.seed}|{self.batch_size}".encode())
        return h.hexdigest()[:16]


def build_tokens(cfg: DataConfig, model: ModelConfig) -> np.ndarray:
    """Read every source, tokenise and check ids against the model's vocabulary -> int32 [N]."""
    encode, eos = make_encoder(cfg, model)
    docs = [d for source in cfg.sources for d in read_documents(source, cfg) if d.strip()]
    tokens = tokenize(docs, encode, eos)
    if len(tokens) and int(tokens.max()) >= model.vocab_size:
        raise ConfigError(f"token id {int(tokens.max())} >= model.vocab_size={model.vocab_size}; "
                          "data.tokenizer does not match the model")
    return tokens


def build_data(cfg: DataConfig, model: ModelConfig) -> PackedData:
    """Every source tokenised and packed into `data.seq_len` rows."""
    return PackedData(pack(build_tokens(cfg, model), cfg.seq_len), cfg.batch_size, cfg.seed)
