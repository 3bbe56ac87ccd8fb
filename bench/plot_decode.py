"""Plots of the decode benchmarks (matplotlib, Agg backend).

* `plot_latency`: ms/token vs context for each method (solid, markers) with its bandwidth floor
  (dashed, same colour), one panel per batch size; from decode_latency.json rows.
* `plot_breakdown`: stacked bars of the per-token time by operation for each method, one panel per
  (batch, context), with the end-to-end figure (if known) as a black tick; from
  decode_breakdown.json.
* `plot_profile`: stacked bars of the GPU kernel time per token by kernel family for each method,
  plus the gap (span - kernels, hatched), with the timed ms/token (black) and the bandwidth floor
  (grey dashes), one panel per (batch, context); from decode_profile.json (`decode_latency --profile`).

    PYTHONPATH=. python bench/plot_decode.py --latency bench/results/decode_latency.json --breakdown bench/results/decode_breakdown.json
    PYTHONPATH=. python bench/plot_decode.py --profile bench/results/decode_profile_h200.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from butler_jax.eval.palette import COLORS  # noqa: E402


def context_label(c: int) -> str:
    """131072 -> "128K" (contexts that are not whole K stay plain)."""
    return f"{c // 1024}K" if c % 1024 == 0 else str(c)


def plot_latency(rows: list[dict], path, title: str = "") -> None:
    """rows: decode_latency.json rows (method, batch, context, status, ms_per_token, floor_ms)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    batches = sorted({r["batch"] for r in ok})
    if not batches:
        raise ValueError("no measured rows to plot")
    methods = list(dict.fromkeys(r["method"] for r in ok))
    colours = {m: COLORS.get(m, plt.get_cmap("tab10")(i % 10)) for i, m in enumerate(methods)}  # eval/palette.py
    fig, axes = plt.subplots(1, len(batches), figsize=(6.4 * len(batches), 4.8), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        contexts = sorted({r["context"] for r in ok if r["batch"] == batch})
        for m in methods:
            pts = sorted((r["context"], r["ms_per_token"], r["floor_ms"]) for r in ok if r["batch"] == batch and r["method"] == m)
            if not pts:
                continue
            x = [p[0] for p in pts]
            ax.plot(x, [p[1] for p in pts], "o-", color=colours[m], label=m)
            # the floor: a dashed line between contexts and a wide tick at each (visible with one context too)
            ax.plot(x, [p[2] for p in pts], "--", marker="_", markersize=22, markeredgewidth=2, color=colours[m],
                    alpha=0.7, linewidth=1, label="bandwidth floor (method colour)" if m == methods[0] else None)
        ax.set_xscale("log", base=2)
        ax.set_xticks(contexts, [context_label(c) for c in contexts])
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("ms / token")
        ax.set_ylim(bottom=0)
        ax.set_title(f"batch {batch}  (dashes: bandwidth floor of each method)")
        ax.grid(True, alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _legend_and_save(fig, axes, path, title: str, fontsize: int) -> None:
    """One legend (the first panel's entries, each label once) right of the last panel; title; save; close."""
    handles, labels = axes[0][0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    axes[0][-1].legend(seen.values(), seen.keys(), fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_breakdown(data: dict, path, title: str = "") -> None:
    """data: decode_breakdown.json (its `totals`: per (batch, context, method) ms/token by group)."""
    totals = data["totals"]
    panels = list(dict.fromkeys((t["batch"], t["context"]) for t in totals))
    groups = list(dict.fromkeys(g for t in totals for g in t["groups_ms"]))
    colours = {g: plt.get_cmap("tab20")(i % 20) for i, g in enumerate(groups)}
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.4, 1.1 * len({t['method'] for t in totals}) + 2) * len(panels), 5.2),
                             squeeze=False)
    for ax, (batch, context) in zip(axes[0], panels):
        rows = [t for t in totals if t["batch"] == batch and t["context"] == context]
        x = range(len(rows))
        bottom = [0.0] * len(rows)
        for g in groups:
            vals = [max(0.0, t["groups_ms"].get(g, 0.0)) for t in rows]
            ax.bar(x, vals, bottom=bottom, color=colours[g], label=g, width=0.7)
            bottom = [b + v for b, v in zip(bottom, vals)]
        for i, t in enumerate(rows):
            if t.get("e2e_ms") is not None:
                ax.plot([i - 0.38, i + 0.38], [t["e2e_ms"]] * 2, color="black", linewidth=2,
                        label="end to end (measured)" if i == 0 else None)
            if t.get("floor_ms") is not None:
                ax.plot([i - 0.38, i + 0.38], [t["floor_ms"]] * 2, color="grey", linestyle="--", linewidth=1.2,
                        label="bandwidth floor" if i == 0 else None)
        ax.set_xticks(list(x), [t["method"] for t in rows], rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("ms / token (sum of timed operations)")
        ax.set_title(f"batch {batch}, context {context_label(context)}")
        ax.grid(True, axis="y", alpha=0.3)
    _legend_and_save(fig, axes, path, title, fontsize=7)


def plot_profile(profiles: list[dict], path, title: str = "") -> None:
    """profiles: decode_profile.json `profiles` (method, batch, context, families {name: {us}}, gap_us,
    ms_per_token, floor_ms); entries without kernel data (a note only, e.g. no GPU) are left out."""
    rows = [p for p in profiles if p.get("families")]
    if not rows:
        raise ValueError("no profile with GPU kernel data to plot (a CPU run records none)")
    panels = list(dict.fromkeys((p["batch"], p["context"]) for p in rows))
    families = list(dict.fromkeys(f for p in rows for f in p["families"]))
    colours = {f: plt.get_cmap("tab10")(i % 10) for i, f in enumerate(families)}
    width = max(5.0, 1.3 * max(sum(1 for p in rows if (p["batch"], p["context"]) == pc) for pc in panels) + 3)
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 5.0), squeeze=False)
    for ax, (batch, context) in zip(axes[0], panels):
        group = [p for p in rows if (p["batch"], p["context"]) == (batch, context)]
        for i, p in enumerate(group):
            bottom = 0.0
            for f in families:
                ms = p["families"].get(f, {}).get("us", 0.0) / 1e3
                ax.bar(i, ms, bottom=bottom, color=colours[f], width=0.6, label=f)
                bottom += ms
            if p.get("gap_us") is not None and p["gap_us"] > 0:
                ax.bar(i, p["gap_us"] / 1e3, bottom=bottom, color="white", edgecolor="grey", hatch="//", width=0.6,
                       label="gap (span - kernels)")
            ax.plot([i - 0.36, i + 0.36], [p["ms_per_token"]] * 2, color="black", linewidth=2, label="timed ms/token")
            ax.plot([i - 0.36, i + 0.36], [p["floor_ms"]] * 2, color="grey", linestyle="--", linewidth=1.5,
                    label="bandwidth floor")
        ax.set_xticks(range(len(group)), [p["method"] for p in group], rotation=20, ha="right", fontsize=9)
        ax.set_ylabel("ms / generated token (GPU kernel time)")
        ax.set_title(f"batch {batch}, context {context_label(context)}")
        ax.grid(True, axis="y", alpha=0.3)
    _legend_and_save(fig, axes, path, title, fontsize=8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", help="decode_latency.json -> decode_latency.png beside it")
    ap.add_argument("--breakdown", help="decode_breakdown.json -> decode_breakdown.png beside it")
    ap.add_argument("--profile", help="decode_profile.json -> decode_profile.png beside it (same stem)")
    ap.add_argument("--title", default="", help="figure title (default: the device in the file's meta)")
    args = ap.parse_args()
    if args.latency:
        path = Path(args.latency)
        data = json.loads(path.read_text())
        meta = data.get("meta", {})
        plot_latency(data["rows"], path.with_suffix(".png"), title=args.title or meta.get("device", ""))
        print(f"wrote {path.with_suffix('.png')}")
    if args.breakdown:
        path = Path(args.breakdown)
        data = json.loads(path.read_text())
        plot_breakdown(data, path.with_suffix(".png"), title=data.get("meta", {}).get("device", ""))
        print(f"wrote {path.with_suffix('.png')}")
    if args.profile:
        path = Path(args.profile)
        data = json.loads(path.read_text())
        plot_profile(data["profiles"], path.with_suffix(".png"), title=args.title or data.get("meta", {}).get("device", ""))
        print(f"wrote {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
