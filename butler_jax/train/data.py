"""Training data: read documents, tokenise, pack into fixed-length sequences, shuffle by seed.

Documents are joined with the EOS token (as the paper's C4 pipeline) and cut into
non-overlapping `seq_len` windows (the last partial window is dropped). The order of windows is
a fresh permutation per epoch drawn from (seed, epoch), so the batch of any step is a pure
function of the step number: resuming at step s reads exactly what an uninterrupted run reads.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterator, Sequence

import numpy as np

from butler_jax import text_source
from butler_jax.config import ConfigError, ModelConfig
from butler_jax.text_source import strip_gutenberg  # noqa: F401  (re-exported: one Gutenberg rule)
from butler_jax.train.config import REPO_ROOT, DataConfig


def read_documents(source: str, cfg: DataConfig) -> Iterator[str]:
    """Documents of one source in the shared syntax of butler_jax/text_source.py (a file, a folder, a
    shipped split or `hf:<name>[:<config>[:<split>]]`), at most `cfg.max_documents` of them."""
    docs = text_source.read_documents(source, cfg.text_field, cfg.hf_split, root=REPO_ROOT)
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


def join_documents(docs: Sequence[Sequence[int]], eos: int | None) -> np.ndarray:
    """All documents' token ids concatenated, each followed by `eos` when given -> int32 [N]."""
    sep = [] if eos is None else [eos]
    return np.asarray([t for doc in docs for t in (*doc, *sep)], np.int32)


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
    """Read every source (at most `data.max_tokens` tokens of each), tokenise and check ids against the
    model's vocabulary -> int32 [N]."""
    encode, eos = make_encoder(cfg, model)
    docs = [ids for source in cfg.sources
            for ids in text_source.take_tokens(read_documents(source, cfg), encode, cfg.max_tokens)]
    tokens = join_documents(docs, eos)
    if len(tokens) and int(tokens.max()) >= model.vocab_size:
        raise ConfigError(f"token id {int(tokens.max())} >= model.vocab_size={model.vocab_size}; "
                          "data.tokenizer does not match the model")
    return tokens


def build_data(cfg: DataConfig, model: ModelConfig) -> PackedData:
    """Every source tokenised and packed into `data.seq_len` rows."""
    return PackedData(pack(build_tokens(cfg, model), cfg.seq_len), cfg.batch_size, cfg.seed)
