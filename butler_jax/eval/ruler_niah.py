"""Needle-in-a-haystack tasks (niah_single_*, niah_multikey_*, niah_multivalue, niah_multiquery)."""

from __future__ import annotations

import random
from typing import Sequence

from butler_jax.eval.haystack import essay_sentences, insert_at_depths, insert_at_random, noise_lines
from butler_jax.eval.ruler_tasks import (NEEDLE, NIAH_PREFIX, NIAH_PREFIX_ONE, NIAH_TEMPLATE, NIAH_TEMPLATE_ONE,
                                         Prompt, TaskConfig, join_list)
from butler_jax.eval.ruler_words import distinct


# needle haystacks: `size` counts filler sentences; every SENTENCES_PER_LINE of them become one
# distractor line, the remainder stays filler at the top. The filler of a block outweighs one line
# (a filler sentence is about 5 tokens, a line about 20 with number values, 80 with UUIDs), so the
# token count only drops at block edges and the fitted prompt lands within one sentence of the budget.
SENTENCES_PER_LINE = {"numbers": 6, "uuids": 24}


class NiahBuilder:
    """Size unit: noise sentences, essay words, or (needle haystack) distractor lines plus filler."""

    max_size = None

    def __init__(self, cfg: TaskConfig, essay_words: Sequence[str] | None = None):
        if cfg.haystack == "essay" and not essay_words:
            raise ValueError(f"{cfg.name} uses the essay haystack: pass essay_path (a folder of .txt essays)")
        self.cfg, self.essay_words = cfg, essay_words
        self.min_size = 1

    def build(self, index: int, size: int, rng: random.Random) -> Prompt:
        cfg = self.cfg
        distractor_rng = random.Random(rng.getrandbits(64))  # the first n distractors do not depend on size
        one = cfg.num_values * cfg.num_queries == 1
        kind = cfg.value_type[:-1] if one else cfg.value_type
        keys = distinct(rng, cfg.key_type, cfg.num_keys)
        values = [distinct(rng, cfg.value_type, cfg.num_values) for _ in keys]
        needles = [NEEDLE.format(type=cfg.value_type, key=k, value=v) for k, vs in zip(keys, values) for v in vs]
        rng.shuffle(needles)
        queried = rng.sample(range(len(keys)), cfg.num_queries)
        query = join_list([keys[i] for i in queried])
        answers = [v for i in queried for v in values[i]]

        if cfg.haystack == "essay":
            context = " ".join(insert_at_depths(essay_sentences(self.essay_words, size), needles, rng))
        elif cfg.haystack == "noise":
            context = "\n".join(insert_at_random(noise_lines(size), needles, rng))
        else:  # needle: distractor needles with fresh keys and values, topped up with filler
            per_line = SENTENCES_PER_LINE["uuids" if "uuids" in (cfg.key_type, cfg.value_type) else "numbers"]
            num_lines, num_filler = divmod(size, per_line)
            fake_keys = distinct(distractor_rng, cfg.key_type, num_lines, exclude=set(keys))
            lines = [NEEDLE.format(type=cfg.value_type, key=k, value=distinct(distractor_rng, cfg.value_type, 1)[0])
                     for k in fake_keys]
            context = "\n".join(noise_lines(num_filler) + insert_at_random(lines, needles, rng))

        template, prefix = (NIAH_TEMPLATE_ONE, NIAH_PREFIX_ONE) if one else (NIAH_TEMPLATE, NIAH_PREFIX)
        return Prompt(template.format(type=kind, context=context, query=query),
                      prefix.format(type=kind, query=query), answers)
