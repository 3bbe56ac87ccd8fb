"""Summaries of evaluation records: a CSV, a markdown table and PNG plots."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable


def summarize(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, budget, task): perplexity from summed NLL, else the mean score."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["method"], r["budget"], r["task"])].append(r)
    rows = []
    for (method, budget, task), rs in sorted(groups.items()):
        row: dict[str, Any] = {"method": method, "budget": budget, "task": task, "samples": len(rs)}
        if "nll_sum" in rs[0]:
            row["metric"] = "perplexity"
            row["value"] = math.exp(sum(r["nll_sum"] for r in rs) / sum(r["count"] for r in rs))
        else:
            row["metric"] = rs[0].get("metric", "score")
            row["value"] = sum(r["score"] for r in rs) / len(rs)
        sparsities = [r["sparsity"] for r in rs if r.get("sparsity") is not None]
        if sparsities:
            row["sparsity"] = sum(sparsities) / len(sparsities)
        recalls = [r["oracle_recall"] for r in rs if r.get("oracle_recall") is not None]
        if recalls:
            row["oracle_recall"] = sum(recalls) / len(recalls)
        rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    fields = ["method", "budget", "task", "metric", "value", "sparsity", "oracle_recall", "samples"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in fields})


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Tasks as columns, (method, budget) as rows."""
    tasks = sorted({r["task"] for r in rows})
    cells: dict[tuple, dict[str, str]] = defaultdict(dict)
    for r in rows:
        fmt = f"{r['value']:.3f}" if r["metric"] == "perplexity" else f"{100 * r['value']:.1f}"
        cells[(r["method"], r["budget"])][r["task"]] = fmt
    header = "| method | budget | " + " | ".join(tasks) + " |"
    lines = [header, "|" + "---|" * (len(tasks) + 2)]
    for (method, budget), values in sorted(cells.items(), key=lambda kv: (kv[0][0] != "dense", kv[0])):
        lines.append(f"| {method} | {budget} | " + " | ".join(values.get(t, "") for t in tasks) + " |")
    return "\n".join(lines) + "\n\n(perplexity: lower is better; other tasks: % correct)\n"


def plot(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """perplexity_vs_sparsity.png and scores_by_task.png (whichever have data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    ppl = [r for r in rows if r["metric"] == "perplexity"]
    if ppl:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for task in sorted({r["task"] for r in ppl}):
            dense = [r["value"] for r in ppl if r["task"] == task and r["method"] == "dense"]
            for method in sorted({r["method"] for r in ppl if r["task"] == task and r["method"] != "dense"}):
                pts = sorted((100 * r.get("sparsity", 0), r["value"]) for r in ppl if r["task"] == task and r["method"] == method)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{method} ({task})")
            if dense:
                ax.axhline(dense[0], color="black", linestyle="--", label=f"dense ({task})")
        ax.set_xlabel("effective sparsity (%)")
        ax.set_xlim(0, 100)  # one fixed scale: a single budget is a column of points, not a zoom into 49.4-49.8 %
        ax.set_ylabel("perplexity")
        ax.set_yscale("log")
        ax.set_title("Perplexity vs sparsity")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / "perplexity_vs_sparsity.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    scores = [r for r in rows if r["metric"] != "perplexity"]
    if scores:
        tasks = sorted({r["task"] for r in scores})
        series = sorted({(r["method"], r["budget"]) for r in scores}, key=lambda s: (s[0] != "dense", s))
        fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(tasks) + 3), 4.5))
        width = 0.8 / max(1, len(series))
        for i, (method, budget) in enumerate(series):
            values = [next((100 * r["value"] for r in scores if r["task"] == t and r["method"] == method and r["budget"] == budget), 0) for t in tasks]
            ax.bar([j + i * width for j in range(len(tasks))], values, width, label=f"{method} {budget}")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks, rotation=30, ha="right")
        ax.set_ylabel("score (%)")
        ax.set_title("Accuracy by task and method")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
        fig.tight_layout()
        path = out_dir / "scores_by_task.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
