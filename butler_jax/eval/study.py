"""One method against the others on the same samples: the head-to-head tables of a study, and a CLI
that rebuilds a study's summary from its samples alone (e.g. after runs cut by a time limit).

    python -m butler_jax.eval.study outputs/eval_longctx/samples.jsonl --out DIR [--focus tokenbutler]

writes DIR/summary.md, summary.csv, the plots (`report.plot`) and head_to_head.md:
- RULER, per length: the focus method's score per task beside the best other non-Oracle method's, the
  tasks where the focus is strictly above every non-Oracle method, and the paired difference focus - M
  over every shared sample (mean over tasks when each task has the same n) with its 95 % CI;
- perplexity, per task and budget: the paired per-window relative difference ppl_focus / ppl_M - 1;
- co-reference, per budget: the paired difference of location inaccuracy (points).
Dense (budget "full") is paired with the focus at every budget.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from butler_jax.eval.report import markdown_table, plot, summarize, write_csv
from butler_jax.eval.stats import paired_difference

REFERENCE = "oracle"  # the upper bound a sparse method is held to, never counted as a rival


def _by(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, dict]]:
    """(method, budget, task) -> sample id -> record."""
    out: dict[tuple[str, str, str], dict[str, dict]] = defaultdict(dict)
    for r in records:
        out[(r["method"], r["budget"], r["task"])][r["sample"]] = r
    return out


def _pairs(groups, focus: str, task: str) -> list[tuple[str, str, dict, dict]]:
    """(other method, budget, focus records, other records) for every budget the focus ran `task` at."""
    out = []
    for (method, budget, t), rs in sorted(groups.items()):
        if t != task or method != focus:
            continue
        for (m, b, t2), other in sorted(groups.items()):
            if t2 == task and m != focus and b in (budget, "full"):
                out.append((m, budget, rs, other))
    return out


def _diff_cell(d: dict[str, float], scale: float, unit: str) -> str:
    return (f"{scale * d['mean']:+.2f}{unit} [{scale * d['ci_low']:+.2f}, {scale * d['ci_high']:+.2f}] "
            f"(n={d['n']}){'' if d['excludes_zero'] else ', CI includes 0'}")


def ruler_head_to_head(records: list[dict[str, Any]], focus: str) -> list[str]:
    """Markdown lines: per RULER length, per-task focus vs the best rival, wins, paired differences."""
    groups = _by(r for r in records if r["task"].startswith("ruler:"))
    lengths = sorted({t.rsplit("@", 1)[1] for _, _, t in groups}, key=int)
    lines: list[str] = []
    for length in lengths:
        at = {k: v for k, v in groups.items() if k[2].endswith(f"@{length}")}
        budgets = sorted({b for m, b, _ in at if m == focus})
        for budget in budgets:
            tasks = sorted({t for m, b, t in at if m == focus and b == budget})
            rivals = sorted({m for m, b, _ in at if m not in (focus, REFERENCE, "dense") and b == budget})
            lines += [f"### RULER @ {length}, {focus} at {budget}", "",
                      f"| task | {focus} | best rival (non-Oracle, sparse) | {REFERENCE} | {focus} above every rival |",
                      "|---|---:|---|---:|---|"]
            wins = 0
            for task in tasks:
                score = lambda m, b=budget: (  # noqa: E731
                    100 * sum(r["score"] for r in at[(m, b, task)].values()) / len(at[(m, b, task)])
                    if (m, b, task) in at else None)
                mine = score(focus)
                ran = {m: score(m) for m in rivals if score(m) is not None}
                missing = [m for m in rivals if m not in ran]
                best = max(ran, key=ran.get) if ran else None
                above = bool(ran) and all(mine > v for v in ran.values()) and not missing
                wins += above
                ref = score(REFERENCE)
                note = "yes" if above else ("not every rival ran: " + ", ".join(missing) if missing and
                                            all(mine > v for v in ran.values()) else "no")
                lines.append(f"| {task.removeprefix('ruler:')} | {mine:.1f} | "
                             f"{'' if best is None else f'{best} {ran[best]:.1f}'} | "
                             f"{'' if ref is None else f'{ref:.1f}'} | {note} |")
            lines += ["", f"{focus} is strictly above every rival on {wins} of {len(tasks)} tasks.", "",
                      f"Paired difference {focus} - M over the shared samples of every task at {length} "
                      "(percentage points, 95 % CI):", ""]
            for method in sorted({m for m, b, _ in at if m != focus and b in (budget, "full")}):
                mine = {s: r["score"] for t in tasks for s, r in at[(focus, budget, t)].items()}
                theirs = {s: r["score"] for (m, b, t), rs in at.items() if m == method and b in (budget, "full")
                          for s, r in rs.items()}
                if set(mine) & set(theirs):
                    lines.append(f"- {focus} - {method}: {_diff_cell(paired_difference(mine, theirs), 100, ' points')}")
            lines.append("")
    return lines


def perplexity_head_to_head(records: list[dict[str, Any]], focus: str) -> list[str]:
    """Markdown lines: per perplexity task and budget, ppl_focus / ppl_M - 1 paired over windows."""
    groups = _by(r for r in records if "nll_sum" in r)
    lines: list[str] = []
    ppl = lambda r: math.exp(r["nll_sum"] / r["count"])  # noqa: E731  (a window's perplexity)
    for task in sorted({t for _, _, t in groups}):
        rows = _pairs(groups, focus, task)
        if not rows:
            continue
        lines += [f"### perplexity, {task}: ppl_{focus} / ppl_M - 1, paired per window (95 % CI)", "",
                  "| budget | vs | difference |", "|---|---|---|"]
        for method, budget, mine, theirs in rows:
            a = {s: ppl(r) for s, r in mine.items()}
            b = {s: ppl(r) for s, r in theirs.items()}
            shared = set(a) & set(b)
            if shared:
                ratio = {s: a[s] / b[s] - 1 for s in shared}
                lines.append(f"| {budget} | {method} | {_diff_cell(paired_difference(ratio, dict.fromkeys(ratio, 0.0)), 100, ' %')} |")
        lines.append("")
    return lines


def coref_head_to_head(records: list[dict[str, Any]], focus: str) -> list[str]:
    """Markdown lines: per budget, location inaccuracy focus - M (points) paired over samples."""
    groups = _by(r for r in records if "location_inaccuracy" in r)
    lines: list[str] = []
    for task in sorted({t for _, _, t in groups}):
        rows = _pairs(groups, focus, task)
        if not rows:
            continue
        lines += [f"### {task}: location inaccuracy {focus} - M (points, lower is better, 95 % CI)", "",
                  "| budget | vs | difference |", "|---|---|---|"]
        for method, budget, mine, theirs in rows:
            a = {s: r["location_inaccuracy"] for s, r in mine.items()}
            b = {s: r["location_inaccuracy"] for s, r in theirs.items()}
            if set(a) & set(b):
                lines.append(f"| {budget} | {method} | {_diff_cell(paired_difference(a, b), 1, ' points')} |")
        lines.append("")
    return lines


def head_to_head(records: list[dict[str, Any]], focus: str) -> str:
    """The markdown of head_to_head.md (see the module doc)."""
    if not any(r["method"] == focus for r in records):
        raise ValueError(f"no record of method {focus!r}; methods present: {sorted({r['method'] for r in records})}")
    body = (ruler_head_to_head(records, focus) + perplexity_head_to_head(records, focus)
            + coref_head_to_head(records, focus))
    return f"# {focus} against every other method, paired on the same samples\n\n" + "\n".join(body)


def write_study(samples: Path, out: Path, focus: str) -> list[Path]:
    """summary.md / summary.csv / plots / head_to_head.md of the records in `samples` (JSON lines, or
    gzipped JSON lines when the name ends in .gz)."""
    text = gzip.open(samples, "rt").read() if samples.suffix == ".gz" else samples.read_text()
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(records)
    write_csv(rows, out / "summary.csv")
    (out / "summary.md").write_text(markdown_table(rows))
    (out / "head_to_head.md").write_text(head_to_head(records, focus))
    return [out / "summary.csv", out / "summary.md", out / "head_to_head.md", *plot(rows, out)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", type=Path, help="samples.jsonl written by evaluate.py (or .jsonl.gz)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the summary, plots and head_to_head.md")
    parser.add_argument("--focus", default="tokenbutler", help="the method compared with every other one")
    args = parser.parse_args(argv)
    if not args.samples.is_file():
        print(f"error: {args.samples} is not a file: give the samples.jsonl that evaluate.py wrote", file=sys.stderr)
        return 2
    try:
        written = write_study(args.samples, args.out, args.focus)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
