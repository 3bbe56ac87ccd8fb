"""Evaluation text and fixed-shape evaluation windows with loss masks.

Documents come from butler_jax/text_source.py (the one source syntax shared with training);
`load_documents` reads a whole source (hub sources default to the `test` split).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from butler_jax.text_source import DATA_DIR, read_documents, wikitext2  # noqa: F401  (DATA_DIR, wikitext2 re-exported)


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


def load_documents(source: str | Path, text_field: str = "text") -> list[str]:
    """Every document of `source` (see butler_jax/text_source.py for the accepted forms)."""
    return [d for d in read_documents(source, text_field, hf_split="test") if d]


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
