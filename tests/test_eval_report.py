"""RULER means in the evaluation summary: over all tasks and per task family, named by what ran."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from butler_jax.eval.report import cell, markdown_table, summarize, write_csv
from butler_jax.eval.ruler_tasks import ALL_TASKS, FAMILIES
from butler_jax.eval.stats import bootstrap_ci, mean_of_means_ci


def _records(method: str, scores: dict[str, list[float]], length: str = "4096") -> list[dict]:
    budget = "full" if method == "dense" else "fixed_50pc"
    return [{"method": method, "budget": budget, "task": f"ruler:{task}@{length}", "sample": str(i), "score": s}
            for task, values in scores.items() for i, s in enumerate(values)]


def _means(rows: list[dict], method: str) -> dict[str, dict]:
    return {r["task"]: r for r in rows if r["method"] == method and r["metric"] in ("ruler_mean", "ruler_family_mean")}


def test_families_are_rulers_categories() -> None:
    assert FAMILIES == {"niah": tuple(t for t in ALL_TASKS if t.startswith("niah_")), "multi-hop tracing": ("vt",),
                        "aggregation": ("cwe", "fwe"), "qa": ("qa_1", "qa_2")}
    assert len(FAMILIES["niah"]) == 8 and sorted(sum(FAMILIES.values(), ())) == sorted(ALL_TASKS)


def test_family_means_name_the_tasks_that_ran(tmp_path) -> None:
    dense = {"niah_single_1": [1, 1, 0, 1], "niah_multikey_1": [0, 0, 1, 0], "vt": [1, 0.5, 0.5, 1], "cwe": [0.2, 0.4]}
    sparse = {"niah_single_1": [1, 0, 0, 0], "vt": [0, 0, 0.5, 0.5]}
    rows = summarize(_records("dense", dense) + _records("tokenbutler", sparse))
    got = _means(rows, "dense")
    assert sorted(got) == ["ruler aggregation mean (1 of 2 tasks)@4096", "ruler mean (4 of 13 tasks)@4096",
                           "ruler multi-hop tracing mean@4096", "ruler niah mean (2 of 8 tasks)@4096"]
    assert got["ruler mean (4 of 13 tasks)@4096"]["value"] == pytest.approx(np.mean([0.75, 0.25, 0.75, 0.3]))
    niah = got["ruler niah mean (2 of 8 tasks)@4096"]
    assert niah["value"] == pytest.approx(0.5) and (niah["ruler_family"], niah["ruler_tasks"], niah["n"]) == ("niah", 2, 8)
    assert niah["metric"] == "ruler_family_mean" and niah["ci_low"] < 0.5 < niah["ci_high"]
    assert got["ruler multi-hop tracing mean@4096"]["value"] == pytest.approx(0.75)
    assert got["ruler aggregation mean (1 of 2 tasks)@4096"]["value"] == pytest.approx(0.3)
    # a method that ran fewer of a set's tasks than ran at that length: same names, "over only N tasks"
    tb = _means(rows, "tokenbutler")
    assert sorted(tb) == ["ruler mean (4 of 13 tasks)@4096", "ruler multi-hop tracing mean@4096",
                          "ruler niah mean (2 of 8 tasks)@4096"]
    assert "over only 1 tasks" in cell(tb["ruler niah mean (2 of 8 tasks)@4096"])
    assert "over only 2 tasks" in cell(tb["ruler mean (4 of 13 tasks)@4096"])
    assert "over only" not in cell(tb["ruler multi-hop tracing mean@4096"]) + cell(got["ruler niah mean (2 of 8 tasks)@4096"])
    write_csv(rows, tmp_path / "summary.csv")
    saved = {r["task"]: r for r in csv.DictReader((tmp_path / "summary.csv").open()) if r["method"] == "dense"}
    assert saved["ruler niah mean (2 of 8 tasks)@4096"]["ruler_family"] == "niah"
    assert saved["ruler mean (4 of 13 tasks)@4096"]["ruler_family"] == "all"
    table = markdown_table(rows)
    assert "ruler aggregation mean (1 of 2 tasks)@4096" in table.splitlines()[0] and "not run" in table


def test_all_thirteen_tasks_give_unqualified_names() -> None:
    scores = {t: [float(i % 2), 1.0] for i, t in enumerate(ALL_TASKS)}
    got = _means(summarize(_records("dense", scores, length="8192")), "dense")
    assert sorted(got) == sorted(["ruler mean@8192", "ruler niah mean@8192", "ruler multi-hop tracing mean@8192",
                                  "ruler aggregation mean@8192", "ruler qa mean@8192"])
    for name, family in [("ruler qa mean@8192", "qa"), ("ruler mean@8192", None)]:
        tasks = FAMILIES[family] if family else ALL_TASKS
        assert got[name]["value"] == pytest.approx(np.mean([np.mean(scores[t]) for t in tasks]))
        assert "over only" not in cell(got[name])


def test_mean_of_means_ci_resamples_within_each_group() -> None:
    est, lo, hi = mean_of_means_ci([np.r_[np.zeros(50), np.ones(50)], np.ones(10)])
    _, lo1, hi1 = bootstrap_ci(np.r_[np.zeros(50), np.ones(50)])
    assert est == 0.75 and lo < est < hi and hi - lo == pytest.approx((hi1 - lo1) / 2, rel=0.15)
    assert mean_of_means_ci([[1.0, 1.0], [0.0]]) == (0.5, 0.5, 0.5)


def test_location_inaccuracy_is_shown_in_percent_once() -> None:
    """`location_metrics` already gives percent; the cell must not scale it again (it read 7857.1)."""
    from butler_jax.eval.report import cell

    row = {"metric": "location_inaccuracy", "value": 78.571, "ci_low": 71.4, "ci_high": 85.7, "n": 2}
    assert cell(row) == "78.6 [71.4, 85.7] (n=2)"
    assert cell({**row, "metric": "coref_exact", "value": 0.5, "ci_low": 0.25, "ci_high": 0.75}) == "50.0 [25.0, 75.0] (n=2)"


def test_scores_plot_draws_location_inaccuracy_in_percent_once(tmp_path, monkeypatch) -> None:
    """The bar of a location_inaccuracy row is its value (already %), a coref_exact row 100 x its fraction
    (the plot drew 7857 % and clipped it at the top)."""
    import matplotlib.axes

    from butler_jax.eval.report import plot

    heights = {}
    real_bar = matplotlib.axes.Axes.bar

    def bar(self, x, height, *args, label=None, **kwargs):
        heights[round(float(x), 3)] = float(height)
        return real_bar(self, x, height, *args, label=label, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", bar)
    rows = [{"method": "quest", "budget": "fixed_50pc", "task": "coref", "metric": "coref_exact", "value": 0.5,
             "ci_low": 0.0, "ci_high": 1.0, "n": 2},
            {"method": "quest", "budget": "fixed_50pc", "task": "coref:location_inaccuracy",
             "metric": "location_inaccuracy", "value": 7.14, "ci_low": 0.0, "ci_high": 14.3, "n": 2}]
    assert [p.name for p in plot(rows, tmp_path)] == ["scores_by_task.png"]
    assert sorted(heights.values()) == [7.14, 50.0]


def test_kept_tokens_come_from_the_measured_statistics() -> None:
    """Co-reference records carry measured `kept_tokens` and no `count`: the summary shows them (it read
    "not measured"); perplexity without `kept_tokens` falls back to the sparsity formula; a record with
    neither (RULER stored before it measured its decode steps) has none."""
    from butler_jax.eval.report import kept_tokens_mean

    coref = {"method": "oracle", "budget": "fixed_50pc", "task": "coref", "sample": "0", "score": 1.0,
             "sparsity": 0.498, "kept_tokens": 131.5}
    assert kept_tokens_mean(coref) == 131.5
    assert kept_tokens_mean({"sparsity": 0.5, "count": 1022}) == 0.5 * 1024 / 2
    assert kept_tokens_mean({"score": 1.0}) is None
    row = next(r for r in summarize([coref]) if r["task"] == "coref")
    assert row["kept_tokens_mean"] == 131.5
