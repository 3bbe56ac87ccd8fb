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


def method_budgets(methods: list[str], budgets: list[str]) -> list[tuple[str, str]]:
    """(method, budget) pairs; dense runs once with budget 'full'."""
    pairs = []
    for method in methods:
        pairs.extend([(method, "full")] if method == "dense" else [(method, b) for b in budgets])
    return pairs


def run_tasks(tasks: list[Task], eval_cfg: EvalConfig, sparsity: SparsityConfig, model_cfg, predictor=None,
              reuse: dict[str, int] | None = None) -> list[dict]:
    """Evaluate every task for every (method, budget), skipping samples stored with the same settings
    hash; returns the summary rows of this run's settings. `reuse` gets counts {reused, computed}."""
    out = Path(eval_cfg.output_dir)
    store = ResultStore(out / "samples.jsonl")
    reuse = {} if reuse is None else reuse
    reuse.update(reused=0, computed=0)
    keys: set[tuple] = set()  # (method, budget, task, settings) of this run
    for task_name, samples, evaluate, budgets, batch, task_settings in tasks:
        for method, budget in method_budgets(eval_cfg.methods, budgets):
            section = dataclasses.replace(sparsity, method=method, budget=budget if budget != "full" else sparsity.budget)
            policy_settings = ({"method": "dense", "implementation": section.implementation} if method == "dense"
                               else dataclasses.asdict(section))  # dense ignores the sparsity knobs
            key = settings_key({**task_settings, "sparsity": policy_settings, "code": code_version()})
            keys.add((method, budget, task_name, key))
            todo = [s for s in samples if not store.has(method=method, budget=budget, task=task_name, sample=s.sample,
                                                        settings=key)]
            reuse["reused"] += len(samples) - len(todo)
            reuse["computed"] += len(todo)
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
                    bar.update(len(chunk))
    rows = summarize(r for r in store.records()
                     if (r["method"], r["budget"], r["task"], r.get("settings")) in keys)
    write_csv(rows, out / "summary.csv")
    (out / "summary.md").write_text(markdown_table(rows))
    plot(rows, out)
    return rows
