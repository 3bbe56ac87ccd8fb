"""RULER generator (our own implementation) for its 13 tasks, fitted to a tokenizer and chat template.

    samples = generate_task("niah_single_1", tokenizer, length=4096, num_samples=25)
    score = score_prediction("niah_single_1", prediction, samples[0].answers)

`length` is the whole sequence: the prompt (chat template and answer prefix included) plus the
task's `max_new_tokens` (RULER's convention; `reserve_generation=False` fits the prompt alone to
`length`). Each prompt lands within 2% of its budget and never over it.
"""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol

from tqdm import tqdm

from butler_jax.eval.haystack import essay_deviations, load_essay_words
from butler_jax.eval.ruler_cwe import CweBuilder
from butler_jax.eval.ruler_fit import fit_size
from butler_jax.eval.ruler_fwe import FweBuilder
from butler_jax.eval.ruler_niah import NiahBuilder
from butler_jax.eval.ruler_qa import QaBuilder, load_qa
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
    deviations: tuple[str, ...] = ()  # how this sample differs from NVIDIA RULER's construction


def make_builder(cfg: TaskConfig, length: int, essay_path: str | Path | None = None,
                 qa_sources: Mapping[str, str | Path] | None = None,
                 count: Callable[[str], int] = len) -> Builder:
    """The builder of one task (loads its essay or qa data); `count` gives a text's token count (vt's example)."""
    if cfg.kind == "niah":
        if cfg.haystack == "essay" and essay_path is None:
            raise FileNotFoundError(f"{cfg.name} uses the essay haystack: pass essay_path, RULER's PaulGrahamEssays.json "
                                    "or its folder (e.g. shared/data/paul-graham-essays); a folder of .txt books "
                                    "is a fallback named as a deviation")
        return NiahBuilder(cfg, load_essay_words(essay_path) if cfg.haystack == "essay" else None)
    if cfg.kind == "vt":
        return VtBuilder(cfg, count)
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
    builder = make_builder(cfg, length, essay_path, qa_sources, lambda text: len(tokenizer.encode(text)))
    budget = length - cfg.max_new_tokens if reserve_generation else length
    wrap = chat_template or (lambda text: text)
    deviations = essay_deviations(essay_path) if cfg.haystack == "essay" and cfg.kind == "niah" else ()
    samples, guess = [], None
    for index in tqdm(range(num_samples), desc=f"{task} @ {length}", disable=not progress, leave=False):
        built: dict[int, tuple[str, list[str], int]] = {}  # size -> (text, answers, tokens): each built once

        def render(size: int) -> tuple[str, list[str], int]:
            if size not in built:
                prompt = builder.build(index, size, random.Random(f"{seed}/{task}/{index}"))
                text = prompt.render(wrap)
                built[size] = (text, prompt.answers, len(tokenizer.encode(text)))
            return built[size]

        guess = fit_size(lambda size: render(size)[2], budget, builder.min_size, builder.max_size, guess,
                         name=f"{task} @ {length}")
        text, answers, tokens = render(guess)
        samples.append(RulerSample(task, index, text, answers, cfg.max_new_tokens, tokens, deviations))
    return samples


def generate_ruler(tokenizer: Tokenizer, length: int, num_samples: int, tasks: Iterable[str] = ALL_TASKS,
                   **kwargs) -> dict[str, list[RulerSample]]:
    """Samples of several tasks. A task whose data is missing (qa file, essays) is an error: list only
    the tasks to run (a mean over fewer than 13 tasks is then named as such).

    The tasks are built in parallel threads (a fast tokenizer's encode releases the GIL); each task's
    samples depend only on its own seeds, so they are the same as built one task after another."""
    tasks = list(tasks)
    with ThreadPoolExecutor(max_workers=max(1, min(len(tasks), os.cpu_count() or 1))) as pool:
        futures = {task: pool.submit(generate_task, task, tokenizer, length, num_samples, **kwargs) for task in tasks}
    return {task: future.result() for task, future in futures.items()}


def score_prediction(task: str, prediction: str, answers: list[str]) -> float:
    """The RULER score (0..1) of one prediction with the task's metric."""
    return METRICS[task_config(task).metric](prediction, answers)
