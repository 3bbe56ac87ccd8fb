"""RULER records carry the selection their decode steps measured (`tasks_generation.ruler_selection`),
the summary rows show it beside the nominal budget, records without it read "not measured" (never
0), and samples stored before RULER measured it are recomputed (CPU, tiny random models)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from butler_jax.config import ModelConfig, load_yaml, section
from butler_jax.eval.config import EvalConfig
from butler_jax.eval.provenance import code_version, settings_key
from butler_jax.eval.report import markdown_table, summarize
from butler_jax.eval.ruler import RulerSample
from butler_jax.eval.runner import run_tasks
from butler_jax.eval.tasks_generation import TaskSample, evaluate_ruler
from butler_jax.models.llama import LlamaForCausalLM, init_params
from butler_jax.sparsity import SparsityConfig, make_policy
from butler_jax.weights import model_from_config

CFG = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2)
NEW = 9
BUDGET = 6


@pytest.fixture(scope="module")
def tiny():
    return LlamaForCausalLM(CFG), init_params(CFG, seed=1)


class CharTokenizer:
    """One token per character (ids < 128), as evaluate_ruler calls it."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) % 128 for c in text]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(97 + i % 26) for i in ids)


def _sample(index: int, text: str, cap: int) -> TaskSample:
    return TaskSample(f"niah_single_1@64-{index}", RulerSample("niah_single_1", index, text, ["zz"], cap, len(text)))


def test_ruler_records_carry_the_measured_selection_and_the_summary_shows_it(tiny) -> None:
    """The answer's decode steps only: tokens 1 .. cap - 1 (token 0 from the prompt's pass, steps past the
    task's cap generated for the batch but not kept, are not counted); pooled over the sparse layers."""
    model, params = tiny
    section = SparsityConfig(method="streamingllm", budget=str(BUDGET), n_sink=2, implementation="xla")
    policy, pp = make_policy(section, CFG)
    items = [_sample(0, "abc", 6), _sample(1, "abcdefgh", 4), _sample(2, "abcd", 1)]
    records = evaluate_ruler(model, params, CharTokenizer(), [], policy, pp, items, batch=4, prompt_width=64,
                             max_new_tokens=NEW)
    for record, item in zip(records[:2], items):
        vis = len(item.payload.input) + np.arange(1, item.payload.max_new_tokens)
        kept = np.minimum(vis, BUDGET)
        assert record["kept_tokens"] == pytest.approx(kept.mean())
        assert record["sparsity"] == pytest.approx(1 - kept.sum() / vis.sum())
        assert record["layer_kept_tokens"] == pytest.approx([vis.mean(), kept.mean(), kept.mean()])
        assert record["layer_sparsity"][0] == 0
    assert records[2]["kept_tokens"] is None and records[2]["sparsity"] is None  # one token: no decode step

    tagged = [dict(r, method="streamingllm", budget=str(BUDGET), task="ruler:niah_single_1@64", sample=str(i))
              for i, r in enumerate(records)]
    row = next(r for r in summarize(tagged) if r["task"] == "ruler:niah_single_1@64")
    assert row["kept_tokens_mean"] == pytest.approx(np.mean([records[0]["kept_tokens"], records[1]["kept_tokens"]]))
    assert row["effective_sparsity"] == pytest.approx(np.mean([records[0]["sparsity"], records[1]["sparsity"]]))
    table = markdown_table(summarize(tagged)).splitlines()
    line = next(li for li in table if li.startswith(f"| streamingllm | {BUDGET} | ruler:niah_single_1@64 |"))
    assert line.endswith(f"| {100 * row['effective_sparsity']:.2f} % | {row['kept_tokens_mean']:.1f} |  |")
    assert any(li.startswith(f"| streamingllm | {BUDGET} | ruler mean (1 of 13 tasks)@64 |") and
               f"{row['kept_tokens_mean']:.1f}" in li for li in table)


def test_records_without_the_measurement_are_not_measured_not_zero() -> None:
    old = [{"method": "h2o", "budget": "64", "task": "ruler:vt@64", "sample": str(i), "metric": "ruler", "score": 1.0}
           for i in range(2)]
    rows = summarize(old)
    assert all(r["kept_tokens_mean"] is None and r["effective_sparsity"] is None for r in rows)
    table = markdown_table(rows)
    for task in ("ruler:vt@64", "ruler mean (1 of 13 tasks)@64"):
        line = next(li for li in table.splitlines() if li.startswith(f"| h2o | 64 | {task} |"))
        assert line.count("not measured") == 2 and "0.0" not in line


def test_stored_ruler_samples_without_the_measurement_are_recomputed(tmp_path, monkeypatch) -> None:
    """A sample stored under the settings hash RULER records had before they measured their decode
    steps is not reused: the run recomputes it and its summary row shows the measurement."""
    import butler_jax.eval.cli as cli

    cfg, params = model_from_config(section(load_yaml("configs/tiny.yaml", []), "model", ModelConfig))
    cfg = dataclasses.replace(cfg, eos_token_id=None)  # no stop token: every answer runs to its cap
    model = LlamaForCausalLM(cfg)
    items = [RulerSample("niah_single_1", i, "abcdefgh"[: 5 + i], ["zz"], 4, 5 + i) for i in range(2)]
    monkeypatch.setattr(cli, "ruler_samples", lambda eval_cfg, tokenizer: {"niah_single_1@64": items})
    eval_cfg = EvalConfig(methods=["dense", "streamingllm"], budgets=["4"], tasks=["ruler"], output_dir=str(tmp_path))
    sparsity = SparsityConfig(n_sink=1, implementation="xla")
    tasks = cli.build_tasks(eval_cfg, sparsity, model, params, CharTokenizer(), {})
    prompts = tasks[0][5]["prompts"]
    old_key = settings_key({"task": "ruler", "prompts": prompts, "code": code_version(),
                            "sparsity": {"method": "dense", "implementation": "xla"}})
    stored = [{"method": "dense", "budget": "full", "task": "ruler:niah_single_1@64", "sample": f"niah_single_1@64-{i}",
               "settings": old_key, "metric": "ruler", "score": 0.0} for i in range(2)]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stored))
    reuse: dict[str, int] = {}
    rows = run_tasks(tasks, eval_cfg, sparsity, cfg, None, reuse)
    assert reuse == {"reused": 0, "computed": 4}
    task_rows = {r["method"]: r for r in rows if r["task"] == "ruler:niah_single_1@64"}
    visible = [np.arange(1, 4) + 5 + i for i in range(2)]
    assert task_rows["dense"]["kept_tokens_mean"] == pytest.approx(np.mean([v.mean() for v in visible]))
    assert task_rows["dense"]["effective_sparsity"] == 0
    want = np.mean([np.minimum(v, 4).mean() for v in visible])
    assert task_rows["streamingllm"]["kept_tokens_mean"] == pytest.approx(want)
    assert math.isclose(task_rows["streamingllm"]["effective_sparsity"],
                        np.mean([1 - np.minimum(v, 4).sum() / v.sum() for v in visible]))
