"""Frequent words extraction (fwe): coded words with Zipf (zeta, alpha = 2) counts; find the top 3."""

from __future__ import annotations

import random
import string

import numpy as np

from butler_jax.eval.ruler_tasks import FWE_PREFIX, FWE_TEMPLATE, Prompt, TaskConfig
from butler_jax.eval.ruler_words import random_letters

NOISE_WORD = "..."
WORD_LEN = 6


def zeta(alpha: float, terms: int = 1_000_000) -> float:
    """Riemann zeta(alpha) for alpha > 1: a partial sum plus the integral tail."""
    k = np.arange(1, terms + 1, dtype=np.float64)
    return float(np.sum(k ** -alpha) + terms ** (1 - alpha) / (alpha - 1))


class FweBuilder:
    """Size unit: total words in the coded text (noise dots included)."""

    max_size = None

    def __init__(self, cfg: TaskConfig, length: int, alpha: float = 2.0):
        self.cfg = cfg
        self.vocab_size = max(length // 50, 10)
        self.alpha = alpha
        ranks = np.arange(1, self.vocab_size + 1, dtype=np.float64)
        self.share = ranks ** -alpha / zeta(alpha)
        # the smallest text whose ranks 2..5 all have distinct counts, so the top 3 are unambiguous
        self.min_size = next(n for n in range(10, 100_000) if len(set(self._counts(n)[1:5])) == 4)

    def _counts(self, size: int) -> list[int]:
        return [int(c) for c in size * self.share]

    def build(self, index: int, size: int, rng: random.Random) -> Prompt:
        vocab: set[str] = set()
        while len(vocab) < self.vocab_size:
            vocab.add(random_letters(rng, WORD_LEN, string.ascii_lowercase))
        ranked = sorted(vocab)
        rng.shuffle(ranked)
        ranked[0] = NOISE_WORD
        words = [w for w, c in zip(ranked, self._counts(size)) for _ in range(c)]
        rng.shuffle(words)
        return Prompt(FWE_TEMPLATE.format(context=" ".join(words)), FWE_PREFIX, ranked[1:4])
