"""RULER generator (our own implementation) for its 13 tasks, fitted to a tokenizer and chat template.

    samples = generate_task("niah_single_1", tokenizer, length=4096, num_samples=25)
    score = score_prediction("niah_single_1", prediction, samples[0].answers)

`length` is the whole sequence: the prompt (chat template and answer prefix included) plus the
task's `max_new_tokens` (RULER's convention; `reserve_generation=False` fits the prompt alone to
`length`). Each prompt lands within 2% of its budget and never over it.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol

from tqdm import tqdm

from butler_jax.eval.haystack import load_essay_words
from butler_jax.eval.ruler_cwe import CweBuilder
from butler_jax.eval.ruler_fit import fit_size
from butler_jax.eval.ruler_fwe import FweBuilder
from butler_jax.eval.ruler_niah import NiahBuilder
from butler_jax.eval.ruler_qa import QaBuilder, QaDataUnavailable, load_qa
from butler_jax.eval.ruler_tasks import ALL_TASKS, Prompt, TaskConfig, task_config
from butler_jax.eval.ruler_vt import VtBuilder
from butler_jax.eval.scoring import METRICS

ChatTemplate = Callable[[str], str]


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


class Builder(Protocol):
    min_size: int
    max_size: int | None

    def build(self, index: int, size: int, rng: random.Random) -> Prompt: ...


@dataclass(frozen=True)
class RulerSample:
    """One generated RULER sample; `input` ends with the answer prefix, ready for generation."""

    task: str
    index: int
    input: str
    answers: list[str]
    max_new_tokens: int
    token_length: int


def make_builder(cfg: TaskConfig, length: int, essay_path: str | Path | None = None,
                 qa_sources: Mapping[str, str | Path] | None = None) -> Builder:
    """The builder of one task (loads its essay or qa data)."""
    if cfg.kind == "niah":
        if cfg.haystack == "essay" and essay_path is None:
            raise FileNotFoundError(f"{cfg.name} uses the essay haystack: pass essay_path, a folder of .txt essays "
                             "(e.g. the Paul Graham essays, or PG-19 books as a public-domain substitute)")
        return NiahBuilder(cfg, load_essay_words(essay_path) if cfg.haystack == "essay" else None)
    if cfg.kind == "vt":
        return VtBuilder(cfg)
    if cfg.kind == "cwe":
        return CweBuilder(cfg, length)
    if cfg.kind == "fwe":
        return FweBuilder(cfg, length)
    return QaBuilder(cfg, load_qa(cfg.name, cfg.dataset, (qa_sources or {}).get(cfg.name)))


def generate_task(task: str, tokenizer: Tokenizer, length: int, num_samples: int, *, seed: int = 42,
                  chat_template: ChatTemplate | None = None, essay_path: str | Path | None = None,
                  qa_sources: Mapping[str, str | Path] | None = None, reserve_generation: bool = True,
                  progress: bool = True) -> list[RulerSample]:
    """`num_samples` samples of `task`, each fitted to `length` tokens of `tokenizer`."""
    cfg = task_config(task)
    builder = make_builder(cfg, length, essay_path, qa_sources)
    budget = length - cfg.max_new_tokens if reserve_generation else length
    wrap = chat_template or (lambda text: text)
    samples, guess = [], None
    for index in tqdm(range(num_samples), desc=f"{task} @ {length}", disable=not progress, leave=False):
        def render(size: int) -> tuple[str, list[str]]:
            prompt = builder.build(index, size, random.Random(f"{seed}/{task}/{index}"))
            return wrap(prompt.body) + prompt.answer_prefix, prompt.answers

        guess = fit_size(lambda size: len(tokenizer.encode(render(size)[0])), budget, builder.min_size,
                         builder.max_size, guess, name=f"{task} @ {length}")
        text, answers = render(guess)
        samples.append(RulerSample(task, index, text, answers, cfg.max_new_tokens, len(tokenizer.encode(text))))
    return samples


def generate_ruler(tokenizer: Tokenizer, length: int, num_samples: int, tasks: Iterable[str] = ALL_TASKS, *,
                   skip_unavailable: bool = False, **kwargs) -> dict[str, list[RulerSample]]:
    """Samples of several tasks; with `skip_unavailable`, tasks whose data is missing (qa files, essays)
    are left out with a warning instead of raising."""
    out: dict[str, list[RulerSample]] = {}
    for task in tasks:
        try:
            out[task] = generate_task(task, tokenizer, length, num_samples, **kwargs)
        except (QaDataUnavailable, FileNotFoundError) as exc:
            if not skip_unavailable:
                raise
            warnings.warn(f"skipping RULER task {task}: {exc}", stacklevel=2)
    return out


def score_prediction(task: str, prediction: str, answers: list[str]) -> float:
    """The RULER score (0..1) of one prediction with the task's metric."""
    return METRICS[task_config(task).metric](prediction, answers)
