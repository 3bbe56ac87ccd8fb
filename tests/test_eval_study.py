"""The study CLI (`butler_jax.eval.study`): head-to-head tables from samples alone."""

from __future__ import annotations

import gzip
import json
import math

import pytest

from butler_jax.eval.study import head_to_head, main


def _ruler(method: str, budget: str, task: str, scores: list[float]) -> list[dict]:
    return [{"method": method, "budget": budget, "task": f"ruler:{task}@4096", "sample": f"{task}-{i}",
             "metric": "ruler", "score": s} for i, s in enumerate(scores)]


def _records() -> list[dict]:
    recs = []
    recs += _ruler("dense", "full", "niah_single_1", [1, 1, 1, 1])
    recs += _ruler("tokenbutler", "fixed_75pc", "niah_single_1", [1, 1, 1, 0])
    recs += _ruler("quest", "fixed_75pc", "niah_single_1", [1, 0, 0, 0])
    recs += _ruler("oracle", "fixed_75pc", "niah_single_1", [1, 1, 1, 1])
    recs += _ruler("tokenbutler", "fixed_75pc", "vt", [0, 0, 1, 0])
    recs += _ruler("quest", "fixed_75pc", "vt", [1, 1, 0, 0])
    for method, nll in (("dense", 2.0), ("tokenbutler", 2.1), ("snapkv", 2.3)):
        budget = "full" if method == "dense" else "fixed_50pc"
        recs += [{"method": method, "budget": budget, "task": "ppl:wiki", "sample": f"w{i}", "metric": "perplexity",
                  "nll_sum": nll * 10 + i, "count": 10} for i in range(3)]
    return recs


def test_head_to_head_counts_wins_and_pairs_samples():
    text = head_to_head(_records(), "tokenbutler")
    assert "| niah_single_1@4096 | 75.0 | quest 25.0 | 100.0 | yes |" in text
    assert "| vt@4096 | 25.0 | quest 50.0 |  | no |" in text
    assert "strictly above every rival on 1 of 2 tasks" in text
    # paired over the 8 shared samples: (3 - 1) + (1 - 2) = +1 of 8 -> +12.50 points
    assert "- tokenbutler - quest: +12.50 points" in text
    # dense shares only niah_single_1: 3 - 4 of 4 -> -25 points
    assert "- tokenbutler - dense: -25.00 points" in text
    # perplexity: exp(2.1 + i/10) / exp(2.3 + i/10) - 1 for every window
    want = 100 * (math.exp(2.1 - 2.3) - 1)
    assert f"| fixed_50pc | snapkv | {want:+.2f} %" in text
    assert f"| fixed_50pc | dense | {100 * (math.exp(0.1) - 1):+.2f} %" in text


def test_head_to_head_names_the_missing_method():
    with pytest.raises(ValueError, match="'nope'"):
        head_to_head(_records(), "nope")


def test_cli_writes_the_study_from_gzipped_samples(tmp_path, capsys):
    samples = tmp_path / "samples.jsonl.gz"
    with gzip.open(samples, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in _records())
    assert main([str(samples), "--out", str(tmp_path / "study")]) == 0
    for name in ("summary.md", "summary.csv", "head_to_head.md", "scores_by_task.png", "perplexity_vs_sparsity.png"):
        assert (tmp_path / "study" / name).is_file(), name
    assert main([str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)]) == 2
    assert "missing.jsonl is not a file" in capsys.readouterr().err
