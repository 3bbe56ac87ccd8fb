"""Variable tracking (vt): a chain of assignments hidden in the noise haystack, with one worked example."""

from __future__ import annotations

import random

from butler_jax.eval.haystack import insert_at_random, noise_lines
from butler_jax.eval.ruler_tasks import VT_PREFIX, VT_TEMPLATE, Prompt, TaskConfig
from butler_jax.eval.ruler_words import random_letters

EXAMPLE_NOISE_SENTENCES = 40  # haystack of the in-context example (about 250 tokens)


def _chain(rng: random.Random, hops: int, name_len: int, noise: int) -> tuple[str, str, list[str]]:
    """(context, value, names) of one assignment chain hidden in `noise` filler sentences."""
    names: list[str] = []
    while len(names) < hops + 1:
        name = random_letters(rng, name_len)
        if name not in names:
            names.append(name)
    value = str(rng.randint(10000, 99999))
    statements = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
    return "\n".join(insert_at_random(noise_lines(noise), statements, rng)), value, names


class VtBuilder:
    """Size unit: noise sentences."""

    max_size = None

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg
        self.min_size = 1

    def _text(self, context: str, value: str) -> tuple[str, str]:
        n = self.cfg.num_hops + 1
        return (VT_TEMPLATE.format(context=context, query=value), VT_PREFIX.format(num_v=n, query=value))

    def build(self, index: int, size: int, rng: random.Random) -> Prompt:
        ex_context, ex_value, ex_names = _chain(rng, self.cfg.num_hops, 3, EXAMPLE_NOISE_SENTENCES)
        ex_body, ex_prefix = self._text(ex_context, ex_value)
        example = f"{ex_body}{ex_prefix}{' '.join(ex_names)}\n\n"
        context, value, names = _chain(rng, self.cfg.num_hops, 5, size)
        body, prefix = self._text(context, value)
        return Prompt(example + body, prefix, names)
