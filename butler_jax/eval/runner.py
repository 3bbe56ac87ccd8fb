"""Runs methods x budgets x tasks, appending one record per sample (resumable), then reports."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from butler_jax.eval.config import EvalConfig
from butler_jax.eval.provenance import code_version, settings_key
from butler_jax.eval.report import markdown_table, plot, summarize, write_csv
from butler_jax.eval.results import ResultStore
from butler_jax.sparsity import SparsityConfig, make_policy

# a task: (name, samples, evaluate(policy, policy_params, samples) -> one record's fields per
# sample, budgets it runs at, samples per evaluate call, settings that change its results: model,
# predictor, task)
Task = tuple[str, list, Callable[[Any, Any, list], list[dict]], list[str], int, dict]


class Interrupted(Exception):
    """The run was stopped (Ctrl-C, SIGINT from a time limit) after its stored samples were summarised
    into `rows` (summary.csv / summary.md / plots written)."""

    def __init__(self, rows: list[dict]):
        super().__init__("evaluation interrupted")
        self.rows = rows


def method_budgets(methods: list[str], budgets: list[str]) -> list[tuple[str, str]]:
    """(method, budget) pairs; dense runs once with budget 'full'."""
    pairs = []
    for method in methods:
        pairs.extend([(method, "full")] if method == "dense" else [(method, b) for b in budgets])
    return pairs


def run_tasks(tasks: list[Task], eval_cfg: EvalConfig, sparsity: SparsityConfig, model_cfg, predictor=None,
              reuse: dict[str, int] | None = None) -> list[dict]:
    """Evaluate every task for every (method, budget), skipping samples stored with the same settings
    hash; returns the summary rows of this run's settings. `reuse` gets counts {reused, computed}.
    Interrupted (KeyboardInterrupt): writes the summary of what is stored, then raises `Interrupted`."""
    out = Path(eval_cfg.output_dir)
    store = ResultStore(out / "samples.jsonl")
    reuse = {} if reuse is None else reuse
    reuse.update(reused=0, computed=0)
    keys: set[tuple] = set()  # (method, budget, task, settings) of this run
    try:
        _evaluate_all(tasks, eval_cfg.methods, sparsity, model_cfg, predictor, store, reuse, keys)
        interrupted = False
    except KeyboardInterrupt:  # every finished batch is stored; summarise those
        interrupted = True
    rows = summarize(r for r in store.records()
                     if (r["method"], r["budget"], r["task"], r.get("settings")) in keys)
    write_csv(rows, out / "summary.csv")
    (out / "summary.md").write_text(markdown_table(rows))
    plot(rows, out)
    if interrupted:
        raise Interrupted(rows)
    return rows


def _evaluate_all(tasks: list[Task], methods: list[str], sparsity: SparsityConfig, model_cfg, predictor, store: ResultStore,
                  reuse: dict[str, int], keys: set[tuple]) -> None:
    """Compute and store every (task, method, budget, sample) not stored with its settings hash;
    `keys` gets each pair's (method, budget, task, settings), `reuse` the reused / computed counts."""
    for task_name, samples, evaluate, budgets, batch, task_settings in tasks:
        for method, budget in method_budgets(methods, budgets):
            section = dataclasses.replace(sparsity, method=method, budget=budget if budget != "full" else sparsity.budget)
            policy_settings = ({"method": "dense", "implementation": section.implementation} if method == "dense"
                               else dataclasses.asdict(section))  # dense ignores the sparsity knobs
            key = settings_key({**task_settings, "sparsity": policy_settings, "code": code_version()})
            keys.add((method, budget, task_name, key))
            todo = [s for s in samples if not store.has(method=method, budget=budget, task=task_name, sample=s.sample,
                                                        settings=key)]
            reuse["reused"] += len(samples) - len(todo)
            if not todo:
                continue
            policy, policy_params = make_policy(section, model_cfg, predictor)
            with tqdm(total=len(todo), desc=f"{task_name} {method} {budget}", leave=False) as bar:
                for first in range(0, len(todo), batch):
                    chunk = todo[first:first + batch]
                    start = time.perf_counter()
                    records = evaluate(policy, policy_params, chunk)
                    seconds = round((time.perf_counter() - start) / len(chunk), 3)
                    for sample, record in zip(chunk, records):
                        record.update(method=method, budget=budget, task=task_name, sample=sample.sample, seconds=seconds,
                                      settings=key)
                        store.add(record)
                        reuse["computed"] += 1
                    bar.update(len(chunk))
