"""Common words extraction (cwe): a numbered word list where 10 words repeat far more often."""

from __future__ import annotations

import random

from butler_jax.eval.ruler_tasks import CWE_PREFIX, CWE_TEMPLATE, Prompt, TaskConfig
from butler_jax.eval.ruler_words import common_word_pool

NUM_COMMON = 10


class CweBuilder:
    """Size unit: distinct words in the list (the 10 common ones included)."""

    def __init__(self, cfg: TaskConfig, length: int):
        self.cfg = cfg
        self.pool = common_word_pool()
        long = length >= 4096
        self.common_reps, self.rare_reps = (30, 3) if long else (6, 1)
        self.example_words, self.example_reps = (40, (10, 3)) if long else (20, (3, 1))
        self.min_size = NUM_COMMON
        self.max_size = len(self.pool) - self.example_words

    @staticmethod
    def _listing(words: list[str], reps: tuple[int, int], rng: random.Random) -> str:
        entries = words[:NUM_COMMON] * reps[0] + words[NUM_COMMON:] * reps[1]
        rng.shuffle(entries)
        return " ".join(f"{i}. {w}" for i, w in enumerate(entries, 1))

    def build(self, index: int, size: int, rng: random.Random) -> Prompt:
        if size > self.max_size:
            raise ValueError(f"cwe needs {size} distinct words but the wonderwords pool has {self.max_size}; "
                             "use a shorter context length")
        words = rng.sample(self.pool, size + self.example_words)
        example, words = words[:self.example_words], words[self.example_words:]
        # RULER's few-shot: a full templated turn whose answer is numbered "1. w 2. w ..."
        shot = (CWE_TEMPLATE.format(context=self._listing(example, self.example_reps, rng)),
                " ".join(f"{i}. {w}" for i, w in enumerate(example[:NUM_COMMON], 1)))
        body = CWE_TEMPLATE.format(context=self._listing(words, (self.common_reps, self.rare_reps), rng))
        return Prompt(body, CWE_PREFIX, words[:NUM_COMMON], shots=(shot,))
