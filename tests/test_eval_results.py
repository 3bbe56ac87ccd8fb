"""Evaluation results: settings-keyed reuse, provenance file, CIs, RULER-format JSONL input (CPU, tiny model)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from butler_jax.config import ModelConfig, load_yaml, section
from butler_jax.eval.cli import build_tasks, write_results
from butler_jax.eval.provenance import provenance
from butler_jax.eval.config import EvalConfig
from butler_jax.eval.report import markdown_table, summarize
from butler_jax.eval.runner import run_tasks
from butler_jax.eval.stats import bootstrap_ci, paired_difference, perplexity_ci
from butler_jax.models.llama import LlamaForCausalLM
from butler_jax.sparsity import SparsityConfig
from butler_jax.weights import model_from_config


class ByteTokenizer:
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))


@pytest.fixture(scope="module")
def tiny():
    cfg, params = model_from_config(section(load_yaml("configs/tiny.yaml", []), "model", ModelConfig))
    return cfg, params, LlamaForCausalLM(cfg)


def _run(tiny, out, text_file, n_window: int) -> tuple[list[dict], dict]:
    cfg, params, model = tiny
    eval_cfg = EvalConfig(methods=["dense", "streamingllm"], budgets=["fixed_50pc"], tasks=["perplexity"],
                          output_dir=str(out), ppl_source=str(text_file), ppl_context=64, ppl_windows=3)
    sparsity = SparsityConfig(n_sink=4, n_window=n_window, granularity="query", dense_layers=1)
    tasks = build_tasks(eval_cfg, sparsity, model, params, ByteTokenizer(), {"model": dataclasses.asdict(cfg)})
    reuse: dict[str, int] = {}
    return run_tasks(tasks, eval_cfg, sparsity, cfg, None, reuse), reuse


def test_other_sparsity_settings_are_recomputed_and_both_kept(tiny, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("".join(chr(97 + (i * 7919) % 26) for i in range(1000)))
    out = tmp_path / "eval"
    first, reuse1 = _run(tiny, out, text, n_window=8)
    second, reuse2 = _run(tiny, out, text, n_window=24)
    again, reuse3 = _run(tiny, out, text, n_window=24)
    sparse = lambda rows: next(r for r in rows if r["method"] == "streamingllm")  # noqa: E731
    assert reuse1 == {"computed": 6, "reused": 0}
    assert reuse2 == {"computed": 3, "reused": 3}  # dense does not depend on the sparsity knobs
    assert reuse3 == {"computed": 0, "reused": 6}  # an identical rerun recomputes nothing
    assert sparse(first)["value"] != sparse(second)["value"] and sparse(again)["value"] == sparse(second)["value"]
    stored = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len({r["settings"] for r in stored if r["method"] == "streamingllm"}) == 2 and len(stored) == 9
    row = sparse(second)
    assert row["n"] == 3 and row["ci_low"] <= row["value"] <= row["ci_high"]
    assert row["vs_dense_ci_low"] <= row["vs_dense"] <= row["vs_dense_ci_high"]
    assert 0.3 < row["effective_sparsity"] < 0.6 and row["kept_tokens_mean"] > 0
    assert "(n=3)" in markdown_table(second)
    started = provenance()
    path = write_results(out, {"eval": {}}, second, reuse2, ["cfg.yaml"], started)
    saved = json.loads(path.read_text())
    assert saved["provenance"]["git_commit"] and "git_dirty" in saved["provenance"]
    assert saved["provenance"]["packages"]["jax"] and saved["samples"] == reuse2
    assert "tree_changed_during_run" not in saved["provenance"] and saved["provenance"]["finished_utc"]
    assert write_results(out, {}, second, reuse2, [], started) != path  # a second run never overwrites the first
    earlier = {**started, "git_commit": "0" * 40}  # a run that started on another commit records that one
    moved = json.loads(write_results(out, {}, second, reuse2, [], earlier).read_text())["provenance"]
    assert moved["git_commit"] == "0" * 40 and moved["tree_changed_during_run"]["git_commit"] == started["git_commit"]


def test_ppl_windows_zero_scores_every_window(tiny, tmp_path):
    """eval.ppl_windows: 0 passes the config check and scores every non-overlapping window of the file
    (here 4 full windows of 64 bytes; the partial fifth is dropped)."""
    from butler_jax.eval.config import check_eval_config
    from butler_jax.sparsity import METHODS

    cfg, params, model = tiny
    text = tmp_path / "t.txt"
    data = "".join(chr(97 + (i * 31) % 26) for i in range(4 * 64 + 20))
    text.write_text(data)
    eval_cfg = EvalConfig(methods=["dense"], tasks=["perplexity"], output_dir=str(tmp_path / "eval"),
                          ppl_source=str(text), ppl_context=64, ppl_windows=0)
    check_eval_config(eval_cfg, cfg, METHODS)
    tasks = build_tasks(eval_cfg, SparsityConfig(), model, params, ByteTokenizer(), {})
    (_, samples, evaluate, _, batch, _), = tasks
    assert batch == 4 and evaluate.keywords["batch"] == 4  # eval.ppl_batch (8) capped at the window count
    assert [s.tokens.tolist() for s in samples] == [list(data[w * 64:(w + 1) * 64].encode()) for w in range(4)]
    run_tasks(tasks, eval_cfg, SparsityConfig(), cfg)
    stored = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert sorted(r["sample"] for r in stored) == [f"window{w}" for w in range(4)]
    assert all(r["count"] == 63 for r in stored)


def test_ppl_batch_below_one_is_a_config_error(tiny):
    from butler_jax.errors import ConfigError
    from butler_jax.eval.config import check_eval_config
    from butler_jax.sparsity import METHODS

    with pytest.raises(ConfigError, match="eval.ppl_batch=0 must be >= 1"):
        check_eval_config(EvalConfig(methods=["dense"], tasks=["perplexity"], ppl_batch=0), tiny[0], METHODS)


def test_bootstrap_and_paired_difference():
    est, lo, hi = bootstrap_ci(np.r_[np.zeros(50), np.ones(50)])
    assert est == 0.5 and 0.35 < lo < 0.5 < hi < 0.65
    ppl, lo, hi = perplexity_ci([10.0, 20.0], [10, 10])
    assert ppl == pytest.approx(np.exp(1.5)) and lo <= ppl <= hi
    d = paired_difference({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 0.5, "b": 1.5, "c": 2.5, "z": 9.0})
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.5) and d["excludes_zero"]
    with pytest.raises(ValueError, match="share no sample"):
        paired_difference({"a": 1.0}, {"b": 1.0})


def test_reads_and_scores_a_ruler_format_jsonl(smollm2_tok, tmp_path):
    from butler_jax.eval.ruler import score_prediction
    from butler_jax.eval.ruler_files import read_ruler_jsonl

    rows = [{"index": 57, "input": f"<|im_start|>user\nOne of the special magic numbers for cat-{i} is: {1000000 + i}."
             f"\nWhat is the special magic number for cat-{i} mentioned in the provided text?<|im_end|>\n"
             "<|im_start|>assistant\n", "outputs": [str(1000000 + i)], "length": 60, "length_w_model_temp": 60,
             "answer_prefix": f" The special magic number for cat-{i} mentioned in the provided text is",
             "token_position_answer": 9} for i in range(4)]
    path = tmp_path / "niah_single_1" / "validation.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = read_ruler_jsonl("niah_single_1", path, smollm2_tok)
    assert [s.index for s in samples] == [0, 1, 2, 3] and samples[0].input.endswith("provided text is")
    assert samples[0].max_new_tokens == 128 and samples[0].token_length == len(smollm2_tok.encode(samples[0].input))
    predictions = [" 1000000.", " 1000001", " none", " 7"]
    records = [{"method": "dense", "budget": "full", "task": "ruler:niah_single_1@file", "sample": str(s.index),
                "score": score_prediction(s.task, p, s.answers)} for s, p in zip(samples, predictions)]
    rows_out = summarize(records)
    assert rows_out[0]["value"] == 0.5 and rows_out[0]["n"] == 4
    mean = next(r for r in rows_out if r["metric"] == "ruler_mean")
    assert mean["task"] == "ruler mean (1 of 13 tasks)@file" and mean["value"] == 0.5
    path.write_text('{"prompt": "x"}\n')
    with pytest.raises(ValueError, match="RULER's format"):
        read_ruler_jsonl("niah_single_1", path, smollm2_tok)


def test_ruler_prompts_are_padded_per_length_not_to_the_longest_of_all(tiny, monkeypatch):
    """One compiled shape per RULER length: 4K prompts are not padded to the 8K prompts' width."""
    from types import SimpleNamespace

    import butler_jax.eval.cli as cli

    def fake(n, length, cap):
        return [SimpleNamespace(index=i, input=f"{length}-{i}", answers=["x"], token_length=length - 40 + i,
                                max_new_tokens=cap) for i in range(n)]

    monkeypatch.setattr(cli, "ruler_samples", lambda eval_cfg, tokenizer: {
        "niah_single_1@4096": fake(2, 4096, 128), "vt@4096": fake(2, 4096, 30), "vt@8192": fake(3, 8192, 30)})
    cfg, params, model = tiny
    eval_cfg = EvalConfig(methods=["dense"], tasks=["ruler"], ruler_batch=4)
    tasks = build_tasks(eval_cfg, SparsityConfig(), model, params, ByteTokenizer(), {})
    shapes = {name: (evaluate.keywords["prompt_width"], evaluate.keywords["max_new_tokens"], batch)
              for name, _, evaluate, _, batch, _ in tasks}
    assert shapes == {"ruler:niah_single_1@4096": (4096, 128, 4), "ruler:vt@4096": (4096, 128, 4),
                      "ruler:vt@8192": (8192, 30, 4)}


def test_provenance_takes_the_commit_from_the_environment(monkeypatch):
    """A tree copied to another machine (stale or no .git) names its commit through COMMIT."""
    monkeypatch.delenv("COMMIT", raising=False)
    from_git = provenance()
    assert from_git["git_commit_from"] == "git"
    monkeypatch.setenv("COMMIT", "abc1234")
    given = provenance()
    assert given["git_commit"] == "abc1234" and given["git_dirty"] is None
    assert given["git_commit_from"] == "COMMIT environment variable"


def test_an_interrupted_run_summarises_its_samples_and_a_rerun_continues(tiny, tmp_path):
    """Ctrl-C (or a time limit's SIGINT) mid-run: the finished batches stay stored and summarised; the same
    command then computes only the rest."""
    from butler_jax.eval.runner import Interrupted

    text = tmp_path / "t.txt"
    text.write_text("".join(chr(97 + (i * 7919) % 26) for i in range(1000)))
    out = tmp_path / "eval"
    cfg, params, model = tiny
    eval_cfg = EvalConfig(methods=["dense", "streamingllm"], budgets=["fixed_50pc"], tasks=["perplexity"],
                          output_dir=str(out), ppl_source=str(text), ppl_context=64, ppl_windows=3)
    sparsity = SparsityConfig(n_sink=4, n_window=8, granularity="query", dense_layers=1)
    tasks = build_tasks(eval_cfg, sparsity, model, params, ByteTokenizer(), {"model": dataclasses.asdict(cfg)})
    calls: list[int] = []

    def stop_after_one_batch(policy, policy_params, items, evaluate=tasks[0][2]):
        if calls:
            raise KeyboardInterrupt
        calls.append(len(items))
        return evaluate(policy, policy_params, items)

    cut = [(name, samples, stop_after_one_batch, *rest) for name, samples, _, *rest in tasks]
    reuse: dict[str, int] = {}
    with pytest.raises(Interrupted) as stop:
        run_tasks(cut, eval_cfg, sparsity, cfg, None, reuse)
    stored = (out / "samples.jsonl").read_text().splitlines()
    assert 0 < len(stored) == calls[0] < 6 and reuse == {"computed": len(stored), "reused": 0}
    assert [r["n"] for r in stop.value.rows] == [len(stored)] and (out / "summary.md").is_file()
    saved = json.loads(write_results(out, {}, stop.value.rows, reuse, [], provenance(), interrupted=True).read_text())
    assert saved["interrupted"] is True and saved["summary"][0]["n"] == len(stored)
    _, again = _run(tiny, out, text, n_window=8)
    assert again == {"computed": 6 - len(stored), "reused": len(stored)}
