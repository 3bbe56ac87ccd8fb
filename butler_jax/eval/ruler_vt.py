"""Variable tracking (vt): a chain of assignments hidden in the noise haystack, after one worked example.

As RULER builds it: statements "VAR ABCDE = 12345" and "VAR FGHIJ = VAR ABCDE " (no period; the
hop keeps RULER's trailing space), one per line between noise lines. The example (3-letter names,
value 12345, the plain task template plus answer prefix and its answer) is fitted once to
EXAMPLE_TOKENS tokens; each sample re-randomises its names and value and places it, followed by
a blank line, before the task text in the user turn.
"""

from __future__ import annotations

import random
from typing import Callable

from butler_jax.eval.haystack import insert_at_random, noise_lines
from butler_jax.eval.ruler_fit import fit_size
from butler_jax.eval.ruler_tasks import VT_PREFIX, VT_TEMPLATE, Prompt, TaskConfig
from butler_jax.eval.ruler_words import random_letters

EXAMPLE_TOKENS = 500  # RULER's budget for the in-context example
EXAMPLE_VALUE = "12345"
NOISE_PER_LINE = 5  # one noise line is RULER's whole five-sentence filler


def _names(rng: random.Random, count: int, length: int) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = random_letters(rng, length)
        if name not in names:
            names.append(name)
    return names


def _chain_text(names: list[str], value: str, noise: int, rng: random.Random) -> str:
    statements = [f"VAR {names[0]} = {value}"] + [f"VAR {b} = VAR {a} " for a, b in zip(names, names[1:])]
    return "\n".join(insert_at_random(noise_lines(noise), statements, rng))


class VtBuilder:
    """Size unit: noise sentences (five to a line)."""

    max_size = None

    def __init__(self, cfg: TaskConfig, count: Callable[[str], int]):
        self.cfg = cfg
        self.min_size = 1
        rng = random.Random("vt-example")
        self.example_names = _names(rng, cfg.num_hops + 1, 3)
        layout = rng.getrandbits(64)
        size = fit_size(lambda n: count(self._example(n, layout)), EXAMPLE_TOKENS, NOISE_PER_LINE, None,
                        tolerance=0.15, name="vt example")
        self.example = self._example(size, layout)

    def _text(self, context: str, value: str) -> tuple[str, str]:
        return VT_TEMPLATE.format(context=context, query=value), VT_PREFIX.format(num_v=self.cfg.num_hops + 1, query=value)

    def _example(self, noise: int, layout: int) -> str:
        context = _chain_text(self.example_names, EXAMPLE_VALUE, noise, random.Random(layout))
        body, prefix = self._text(context, EXAMPLE_VALUE)
        return f"{body}{prefix} {' '.join(self.example_names)}\n"

    def build(self, index: int, size: int, rng: random.Random) -> Prompt:
        example = self.example
        for old, new in zip(self.example_names, _names(rng, len(self.example_names), 3)):
            example = example.replace(old, new)
        example = example.replace(EXAMPLE_VALUE, str(rng.randint(10000, 99998)))
        names = _names(rng, self.cfg.num_hops + 1, 5)
        value = str(rng.randint(10000, 99998))
        body, prefix = self._text(_chain_text(names, value, size, rng), value)
        return Prompt(f"{example}\n{body}", prefix, names)
