"""Mixed row lengths in one training run: steps of equal token count, rows of several lengths.

With `data.mixed_lengths = (L1, L2, ...)` every step holds `data.batch_size * data.seq_len`
tokens, cut as `batch_size * seq_len // L` rows of L tokens; the lengths take turns (step s uses
`mixed_lengths[s % n]`). Each length packs the same token stream and shuffles by (seed, L, epoch),
so the batch of a step is still a pure function of the step number (exact resume). The train
step compiles once per length (static shapes per length).
"""

from __future__ import annotations

import hashlib

import numpy as np

from butler_jax.config import ModelConfig
from butler_jax.train.config import DataConfig
from butler_jax.train.data import PackedData, build_data, build_tokens, pack


class MixedLengthData:
    """Rows of several lengths in turn; the same interface as `PackedData` (batch / position / fingerprint)."""

    def __init__(self, tokens: np.ndarray, lengths: tuple[int, ...], tokens_per_step: int, seed: int) -> None:
        self.lengths = tuple(lengths)
        self.parts = [PackedData(pack(tokens, L), tokens_per_step // L, seed * 1_000_003 + L) for L in self.lengths]

    def part(self, step: int) -> tuple[int, PackedData]:
        """(index of the row length used by `step`, its packed data)."""
        i = step % len(self.parts)
        return i, self.parts[i]

    def batch(self, step: int) -> np.ndarray:
        """Tokens int32 [tokens_per_step // L, L] of training step `step` (0-based)."""
        i, part = self.part(step)
        return part.batch(step // len(self.parts))

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, index within the epoch) of `step`'s batch within its row length's data."""
        i, part = self.part(step)
        return part.position(step // len(self.parts))

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """Rows per step for each length."""
        return tuple(p.batch_size for p in self.parts)

    def fingerprint(self) -> str:
        """Short hash over every length's packed tokens and seeds."""
        h = hashlib.sha1()
        for p in self.parts:
            h.update(p.fingerprint().encode())
        return h.hexdigest()[:16]


def build_step_data(data_cfg: DataConfig, model: ModelConfig) -> PackedData | MixedLengthData:
    """The run's data: one row length (`data.seq_len`) or `data.mixed_lengths` in turn."""
    if not data_cfg.mixed_lengths:
        return build_data(data_cfg, model)
    return MixedLengthData(build_tokens(data_cfg, model), data_cfg.mixed_lengths, data_cfg.batch_size * data_cfg.seq_len, data_cfg.seed)
