"""Summaries of evaluation records: rows with n and 95 % CIs, a CSV, a markdown table and PNG plots.

Perplexity rows: exp(summed NLL / tokens) over windows, bootstrap CI over windows, and the paired
per-window relative difference to dense (`vs_dense_*`). Score rows: mean over samples with a bootstrap
CI. Co-reference adds a `location_inaccuracy` row; RULER adds, per (method, budget, length), the mean
over its tasks ("ruler mean", metric `ruler_mean`) and over each of RULER's task families that ran
("ruler niah mean", "ruler multi-hop tracing mean", "ruler aggregation mean", "ruler qa mean", metric
`ruler_family_mean`; families in eval/ruler_tasks.py `FAMILIES`); a mean over fewer tasks than its
set holds, counted over all methods at that length, is named so: "ruler mean (3 of 13 tasks)",
"ruler niah mean (2 of 8 tasks)". A method that ran fewer of them than that says "over only N tasks".

Every row carries, beside the nominal budget, the measured `effective_sparsity` and
`kept_tokens_mean`: the mean over its records of their measured `sparsity` / `kept_tokens` (the
simulated passes' statistics for perplexity and co-reference, the decode steps' for RULER); a row
none of whose records measured them (records stored before RULER measured its decode steps) says
"not measured", never 0.
"""

from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from butler_jax.eval.palette import color
from butler_jax.eval.ruler_tasks import ALL_TASKS, FAMILIES
from butler_jax.eval.stats import bootstrap_ci, mean_of_means_ci, paired_difference, perplexity_ci
from butler_jax.sparsity.budget import parse_budget

TASK_SETS = {"all": ALL_TASKS, **FAMILIES}  # RULER's 13 tasks, and each family's
FIELDS = ["method", "budget", "nominal_sparsity", "task", "metric", "value", "ci_low", "ci_high", "n",
          "effective_sparsity", "kept_tokens_mean", "vs_dense", "vs_dense_ci_low", "vs_dense_ci_high",
          "oracle_recall", "ruler_family", "ruler_tasks", "deviations"]


def nominal_sparsity(budget: str) -> float | None:
    """The budget's nominal sparsity (0..1) for a fraction budget; None for dense or a token count."""
    if budget == "full":
        return 0.0
    b = parse_budget(budget)
    return None if b.keep_fraction is None else 1 - b.keep_fraction


def kept_tokens_mean(record: dict[str, Any]) -> float | None:
    """Mean keys attended per query row and selection head: the record's measured `kept_tokens` (the
    simulated passes' statistics; for RULER the decode steps', `tasks_generation.ruler_selection`), else
    from the measured sparsity of a teacher-forced window of `count + 1` tokens (causal rows see (T + 1) / 2
    keys on average); None where not measured."""
    if record.get("kept_tokens") is not None:
        return float(record["kept_tokens"])
    if record.get("sparsity") is None or record.get("count") is None:
        return None
    return (1 - record["sparsity"]) * (record["count"] + 2) / 2


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _window_ppl(r: dict) -> float:
    return math.exp(r["nll_sum"] / r["count"])


def _base_row(method: str, budget: str, task: str, rs: list[dict]) -> dict[str, Any]:
    deviations = sorted({d for r in rs for d in r.get("deviations", [])})
    return {"method": method, "budget": budget, "nominal_sparsity": nominal_sparsity(budget), "task": task,
            "n": len(rs), "effective_sparsity": _mean([r["sparsity"] for r in rs if r.get("sparsity") is not None]),
            "kept_tokens_mean": _mean([k for k in map(kept_tokens_mean, rs) if k is not None]),
            "oracle_recall": _mean([r["oracle_recall"] for r in rs if r.get("oracle_recall") is not None]),
            "deviations": "; ".join(deviations)}


def summarize(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows per (method, budget, task), plus coref location inaccuracy and RULER means (see module doc)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["method"], r["budget"], r["task"])].append(r)
    dense = {task: {r["sample"]: _window_ppl(r) for r in rs} for (m, _, task), rs in groups.items()
             if m == "dense" and "nll_sum" in rs[0]}
    rows = []
    for (method, budget, task), rs in sorted(groups.items()):
        row = _base_row(method, budget, task, rs)
        if "nll_sum" in rs[0]:
            row["metric"] = "perplexity"
            row["value"], row["ci_low"], row["ci_high"] = perplexity_ci([r["nll_sum"] for r in rs], [r["count"] for r in rs])
            if method != "dense" and task in dense:
                ratio = {r["sample"]: _window_ppl(r) / dense[task][r["sample"]] - 1 for r in rs
                         if r["sample"] in dense[task]}
                if ratio:
                    d = paired_difference(ratio, {s: 0.0 for s in ratio})
                    row.update(vs_dense=d["mean"], vs_dense_ci_low=d["ci_low"], vs_dense_ci_high=d["ci_high"])
        else:
            row["metric"] = rs[0].get("metric", "score")
            row["value"], row["ci_low"], row["ci_high"] = bootstrap_ci([r["score"] for r in rs])
        rows.append(row)
        if "location_inaccuracy" in rs[0]:
            extra = dict(row, task=f"{task}:location_inaccuracy", metric="location_inaccuracy")
            extra["value"], extra["ci_low"], extra["ci_high"] = bootstrap_ci([r["location_inaccuracy"] for r in rs])
            rows.append(extra)
    rows.extend(_ruler_means(groups))
    return rows


def _ruler_means(groups: dict[tuple, list[dict]]) -> list[dict[str, Any]]:
    """Per (method, budget, length): the unweighted mean of the RULER task scores over all tasks
    (`ruler_family` "all") and over each of RULER's task families that ran, with a bootstrap CI that
    resamples each task's samples (see the module doc for the names)."""
    by: dict[tuple, dict[str, list[float]]] = defaultdict(dict)
    for (method, budget, task), rs in groups.items():
        if task.startswith("ruler:") and "@" in task:
            name, length = task[len("ruler:"):].rsplit("@", 1)
            by[(method, budget, length)][name] = [r["score"] for r in rs]
    union: dict[str, set[str]] = defaultdict(set)  # every task run at a length, over all methods
    for (_, _, length), tasks in by.items():
        union[length] |= set(tasks)
    rows = []
    for (method, budget, length), tasks in sorted(by.items()):
        for family, members in TASK_SETS.items():
            ran = {t: v for t, v in tasks.items() if t in members}
            if not ran:
                continue
            total = len(union[length] & set(members))
            label = "ruler mean" if family == "all" else f"ruler {family} mean"
            label += "" if total == len(members) else f" ({total} of {len(members)} tasks)"
            rs = [r for t in ran for r in groups[(method, budget, f"ruler:{t}@{length}")]]
            row = _base_row(method, budget, f"{label}@{length}", rs)
            value, low, high = mean_of_means_ci(list(ran.values()))
            row.update(metric="ruler_mean" if family == "all" else "ruler_family_mean", ruler_family=family,
                       ruler_tasks=len(ran), value=value, ci_low=low, ci_high=high)
            rows.append(row)
    return rows


def percent(value: float, metric: str) -> float:
    """A score row's value in %: location_inaccuracy is stored in %, every other score as a fraction."""
    return value if metric == "location_inaccuracy" else 100 * value


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return ""
    if metric == "perplexity":
        return f"{value:.3f}"
    return f"{percent(value, metric):.1f}"


def ruler_tasks_run(row: dict[str, Any]) -> int:
    """The number of tasks of a RULER mean row's set (all, or its family) that ran at its length over all
    methods: N of "(N of M tasks)" in its name, else the whole set."""
    partial = re.search(r"\((\d+) of \d+ tasks\)", row["task"])
    if partial:
        return int(partial.group(1))
    return len(TASK_SETS[row["ruler_family"]])


def cell(row: dict[str, Any]) -> str:
    """'value [low, high] (n=N)' in the row's unit (perplexity, else %)."""
    m = row["metric"]
    only = f", over only {row['ruler_tasks']} tasks" if row.get("ruler_tasks") and row["ruler_tasks"] < ruler_tasks_run(row) else ""
    return f"{_fmt(row['value'], m)} [{_fmt(row['ci_low'], m)}, {_fmt(row['ci_high'], m)}] (n={row['n']}{only})"


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in FIELDS})


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Tasks as columns, (method, budget) as rows; every figure with its 95 % CI and n; then the measured
    sparsity, kept tokens, paired perplexity differences and any deviation from the reference benchmark."""
    tasks = sorted({r["task"] for r in rows})
    cells: dict[tuple, dict[str, str]] = defaultdict(dict)
    for r in rows:
        cells[(r["method"], r["budget"])][r["task"]] = cell(r)
    order = sorted(cells, key=lambda k: (k[0] != "dense", k))
    lines = ["| method | budget | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 2)]
    lines += [f"| {m} | {b} | " + " | ".join(cells[(m, b)].get(t, "not run") for t in tasks) + " |" for m, b in order]
    lines += ["", "(value [95 % CI] (n samples or windows); perplexity: lower is better; location_inaccuracy: % "
              "wrong, lower is better; other tasks: % correct)", "",
              "| method | budget | task | nominal sparsity | effective sparsity | kept tokens (mean per row) | "
              "perplexity vs dense, paired [95 % CI] |", "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["method"] != "dense", r["method"], r["budget"], r["task"])):
        if r["metric"] == "location_inaccuracy":  # its co-reference row holds the same selection
            continue
        pct = lambda v: "" if v is None else f"{100 * v:.2f} %"  # noqa: E731
        measured = "not measured" if r.get("effective_sparsity") is None else pct(r["effective_sparsity"])
        kept = "not measured" if r.get("kept_tokens_mean") is None else f"{r['kept_tokens_mean']:.1f}"
        vs = "" if r.get("vs_dense") is None else (
            f"{100 * r['vs_dense']:+.2f} % [{100 * r['vs_dense_ci_low']:+.2f}, {100 * r['vs_dense_ci_high']:+.2f}]")
        lines.append(f"| {r['method']} | {r['budget']} | {r['task']} | {pct(r['nominal_sparsity'])} | "
                     f"{measured} | {kept} | {vs} |")
    deviations = sorted({d for r in rows for d in r["deviations"].split("; ") if d})
    if deviations:
        lines += ["", "**Deviations from the reference benchmark:**"] + [f"- {d}" for d in deviations]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """perplexity_vs_sparsity.png (relative to dense, CI bars) and scores_by_task.png (CI bars, 'not run'
    hatched), whichever have data; one colour per method (eval/palette.py)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    written = []
    ppl = [r for r in rows if r["metric"] == "perplexity" and r.get("vs_dense") is not None]
    if ppl:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for task in sorted({r["task"] for r in ppl}):
            for method in sorted({r["method"] for r in ppl if r["task"] == task}):
                pts = sorted((100 * (r["effective_sparsity"] or 0), 100 * r["vs_dense"], 100 * r["vs_dense_ci_low"],
                              100 * r["vs_dense_ci_high"]) for r in ppl if r["task"] == task and r["method"] == method)
                x, y = [p[0] for p in pts], [p[1] for p in pts]
                err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=color(method), label=f"{method} ({task})")
        ax.axhline(0, color=color("dense"), linestyle="--", label="dense")
        ax.set_xlabel("measured effective sparsity (%)")
        ax.set_xlim(0, 100)
        ax.set_ylabel("perplexity vs dense, paired per window (%)")
        ax.set_title("Perplexity relative to dense (95 % CI over windows)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / "perplexity_vs_sparsity.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    scores = [r for r in rows if r["metric"] not in ("perplexity",)]
    if scores:
        tasks = sorted({r["task"] for r in scores})
        series = sorted({(r["method"], r["budget"]) for r in scores}, key=lambda s: (s[0] != "dense", s))
        fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(tasks) + 3), 4.5))
        width = 0.8 / max(1, len(series))
        labelled: set[str] = set()
        for i, (method, budget) in enumerate(series):
            for j, t in enumerate(tasks):
                r = next((r for r in scores if r["task"] == t and r["method"] == method and r["budget"] == budget), None)
                x = j + i * width
                if r is None:  # not run: an empty hatched slot, never a zero bar
                    ax.bar(x, 100, width, fill=False, hatch="//", edgecolor="#bbbbbb", linewidth=0)
                    continue
                m, label = r["metric"], f"{method} {budget}"
                v, low, high = (percent(r[key], m) for key in ("value", "ci_low", "ci_high"))
                ax.bar(x, v, width, color=color(method), yerr=[[v - low], [high - v]],
                       capsize=2, label=None if label in labelled else label)
                labelled.add(label)
        handles, labels = ax.get_legend_handles_labels()
        handles.append(Patch(fill=False, hatch="//", edgecolor="#bbbbbb", label="not run"))
        ticks = [re.sub(r" of (\d+) tasks", r"/\1", t.removeprefix("ruler:")) for t in tasks]
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], ticks, rotation=30, ha="right")
        ax.set_ylim(0, 105)
        ax.set_ylabel("score (%), 95 % CI")
        ax.set_title("% correct by task and method (location_inaccuracy: % wrong)")
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        path = out_dir / "scores_by_task.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
