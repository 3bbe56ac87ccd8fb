"""Token-selection benchmark: exact top-8192 of 131072 keys per row, the Pallas methods of
`kernels.topk_select` against lax.top_k, the lax.top_k reference and the bytes floor (the scores
read once at the read-only bandwidth of `bench.timing.read_bandwidth`), plus `score_and_select`.

Wall figures: one jitted lax.fori_loop of ITERS dependent calls (the carry writes a value
derived from the last output into the input's first element, so nothing is hoisted), timed end to
end and divided by ITERS ("loop"); the same loop unrolled ("unrolled": no while-loop
machinery between calls, which costs ~12 us an iteration on the H200, see `bench_loop`). The
2-16 MB of scores stay in L2 across calls, as they do in decode after scoring. "device": the
sum of the GPU kernels' durations per call from a profiler trace (`bench.timing.device_event_us`;
no launch gaps; "histogram"'s passes share one kernel name, _hist_kernel, summed). `--stages`
skips the bandwidths, references and score_and_select: the loop's cost and every method's
per-kernel device time on f32 and bf16 (the earlier kernels' bf16 rows too).
Run from the repo root: `python -m bench.select_topk [--stages]` (writes select.md / .json or
select_stages.json under $OUT or .). COMMIT in the environment names the tree's commit where
.git is absent.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bench.timing import best_seconds, copy_bandwidth, device_event_us, read_bandwidth
from butler_jax.kernels.score_select import importance_scores, score_and_select
from butler_jax.kernels.topk_select import METHODS, topk_select

K = 8192
T = 131072
ITERS = 50
KW = dict(n_sink=4, n_recent=64)
PALLAS = tuple(m for m in METHODS if m != "auto")
SHOWN = ("auto",) + PALLAS  # columns of the table


def next_input(x: jax.Array, out: jax.Array) -> jax.Array:
    """The timing loop's carry: x with its first element set from `out` (a data dependence, so no
    call is hoisted), every other element unchanged. Setting a whole slice instead zeroed query head
    0 of `score_and_select` (its first output index is the sink 0): all-equal scores in that row made
    every timed call take the radix fallback, the 2026-12 "anomaly" of score_and_select."""
    flat = x.reshape(-1)
    return flat.at[0].set((out.reshape(-1)[0] % 2).astype(x.dtype)).reshape(x.shape)


def _amortised_us(fn, x: jax.Array, unroll: bool = False) -> float:
    """fn: x -> array; mean us per call over ITERS dependent calls in one jit (`next_input`)."""
    def body(_, s):
        return next_input(s, fn(s))

    loop = jax.jit(lambda s: jax.lax.fori_loop(0, ITERS, body, s, unroll=unroll))
    loop(x).block_until_ready()
    return best_seconds(loop, x) / ITERS * 1e6


def _try(fn, *args):
    """fn(*args), or NaN with the error printed when the variant fails to compile or run."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - a failing variant must not hide the others
        print(f"FAILED: {type(e).__name__}: {str(e)[:1500]}", flush=True)
        return float("nan")


def _same(got, want) -> bool:
    return all(np.array_equal(np.asarray(g), np.asarray(w)) for g, w in zip(got, want))


def _inputs(rows: int, dtype):
    scores = jax.random.normal(jax.random.PRNGKey(rows), (rows, T), jnp.float32).astype(dtype)
    lengths = jnp.full((rows,), T, jnp.int32)
    return scores, lengths, topk_select(scores, K, lengths, implementation="xla", **KW)


def _method_fn(method: str, lengths):
    return jax.jit(lambda s: topk_select(s, K, lengths, implementation="pallas", method=method,
                                         **KW))


def bench_select(rows: int, dtype, read_bw: float | None, methods=PALLAS) -> dict:
    """Per method: loop us, device us (per kernel and summed), exactness; "auto" unrolled; with
    read_bw the floor, the XLA reference and lax.top_k."""
    scores, lengths, want = _inputs(rows, dtype)
    res = {"rows": rows, "T": T, "dtype": jnp.dtype(dtype).name, "k": K}
    for m in methods:
        fn = _method_fn(m, lengths)
        res[f"{m}_us"] = _try(_amortised_us, lambda s: fn(s)[0], scores)
        res[f"{m}_exact"] = _try(lambda: _same(fn(scores), want))
        kernels = _try(device_event_us, fn, scores)
        res[f"{m}_kernels_us"] = kernels
        res[f"{m}_device_us"] = sum(kernels.values()) if isinstance(kernels, dict) else kernels
    fn = _method_fn("auto", lengths)
    res["auto_unrolled_us"] = _try(_amortised_us, lambda s: fn(s)[0], scores, True)
    if read_bw is None:
        return res
    res["floor_us"] = rows * T * jnp.dtype(dtype).itemsize / read_bw * 1e6
    ref = jax.jit(lambda s: topk_select(s, K, lengths, implementation="xla", **KW))
    res["xla_reference_us"] = _amortised_us(lambda s: ref(s)[0], scores)
    res["lax_top_k_us"] = _amortised_us(lambda s: jax.lax.top_k(s, K)[1], scores)
    return res


def bench_loop(rows: int) -> dict:
    """The timing loop's own cost per iteration: a body that only updates the carry."""
    x = jnp.zeros((rows, T), jnp.float32)
    return {"rows": rows, "loop_us": _amortised_us(lambda s: s[:, 1], x),
            "loop_unrolled_us": _amortised_us(lambda s: s[:, 1], x, True)}


def bench_score_select(s: int) -> dict:
    """B=1, S heads, T, d'=16 bf16 keys: the Pallas scorer alone, the selection alone, and
    score_and_select (Pallas scorer + default selection)."""
    b, d = 1, 16
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    q = jax.random.normal(k1, (b, s, d), jnp.bfloat16)
    kimp = jax.random.normal(k2, (b, s, T, d), jnp.bfloat16)
    lengths = jnp.full((b,), T, jnp.int32)
    rows = jnp.full((b * s,), T, jnp.int32)
    scores = importance_scores(q, kimp).reshape(b * s, T)
    return {"rows": s, "T": T, "k_bytes_MB": kimp.size * 2 / 1e6,
            "pallas_scores_us": _try(_amortised_us, lambda qq: importance_scores(
                qq, kimp, implementation="pallas"), q),
            "select_us": _try(_amortised_us, lambda x: topk_select(
                x, K, rows, implementation="pallas", **KW)[0], scores),
            "score_and_select_us": _try(_amortised_us, lambda qq: score_and_select(
                qq, kimp, lengths, K, implementation="pallas", **KW)[0], q)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stages", action="store_true", help="loop cost and per-kernel times only")
    ap.add_argument("--budget-s", type=float, default=130.0,
                    help="score_and_select starts only within this many seconds")
    args = ap.parse_args()
    deadline = time.time() + args.budget_s
    out = Path(os.environ.get("OUT", "."))
    out.mkdir(parents=True, exist_ok=True)
    commit = os.environ.get("COMMIT") or subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True,
        cwd=Path(__file__).parent).stdout.strip()
    command = "PYTHONUNBUFFERED=1 python -m bench.select_topk" + (" --stages" * args.stages)
    meta = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command, "k": K, "T": T, "iters": ITERS}
    loop = [bench_loop(r) for r in (8, 32)]
    print(json.dumps(loop), flush=True)
    if args.stages:
        st = [bench_select(r, dt, None, SHOWN) for r in (8, 32)
              for dt in (jnp.float32, jnp.bfloat16)]
        print(json.dumps(st, indent=1))
        (out / "select_stages.json").write_text(json.dumps({**meta, "loop": loop, "stages": st},
                                                           indent=1))
        return
    read_bw, copy_bw = read_bandwidth(), copy_bandwidth()
    print(f"read {read_bw / 1e12:.2f} TB/s, copy {copy_bw / 1e12:.2f} TB/s", flush=True)
    meta.update(read_bandwidth_TBps=read_bw / 1e12, copy_bandwidth_TBps=copy_bw / 1e12)
    sel = []
    for rows in (8, 32):
        for dtype in (jnp.float32, jnp.bfloat16):
            r = bench_select(rows, dtype, read_bw, SHOWN)
            print(json.dumps(r), flush=True)
            sel.append(r)
    ss = []
    for s in (8, 32):
        if time.time() < deadline:
            ss.append(bench_score_select(s))
            print(json.dumps(ss[-1]), flush=True)
    text = _markdown(meta, loop, sel, ss)
    print(text)
    (out / "select.md").write_text(text)
    (out / "select.json").write_text(json.dumps(
        {**meta, "loop": loop, "select": sel, "score_select": ss}, indent=1))


def _markdown(meta: dict, loop: list[dict], sel: list[dict], ss: list[dict]) -> str:
    def f(x) -> str:
        return f"{x:.1f}" if isinstance(x, float) else str(x)

    lines = [f"# Token selection, k={K} of T={T} ({meta['device']}, jax {meta['jax']}, "
             f"{meta['date']}, commit {meta['commit']})", "",
             f"Command: `{meta['command']}`; us per call; loop = {ITERS} dependent calls in one "
             f"jitted fori_loop, unrolled = the same loop unrolled, device = the sum of the "
             f"call's GPU kernel durations (profiler trace, no launch gaps); n_sink=4, "
             f"n_recent=64. Floor: the scores read once at the read bandwidth "
             f"{meta['read_bandwidth_TBps']:.2f} TB/s (copy {meta['copy_bandwidth_TBps']:.2f} "
             f"TB/s read+write). The loop alone (a body that only updates the carry) costs "
             + ", ".join(f"{f(r['loop_us'])} us ({r['rows']} rows; unrolled "
                         f"{f(r['loop_unrolled_us'])})" for r in loop) + ".", "",
             "| rows | dtype | floor | auto unrolled | " + " | ".join(
                 f"{m} loop / device" for m in SHOWN) + " | xla reference | lax.top_k "
             f"| exact ({' / '.join(SHOWN)}) |", "|---|---|---:|---:|" + "---:|" * (len(SHOWN) + 2)
             + "---|"]
    for r in sel:
        lines.append(f"| {r['rows']} | {r['dtype']} | {f(r['floor_us'])} | "
                     f"{f(r['auto_unrolled_us'])} | " + " | ".join(
                         f"{f(r.get(f'{m}_us', '-'))} / {f(r.get(f'{m}_device_us', '-'))}"
                         for m in SHOWN)
                     + f" | {f(r['xla_reference_us'])} | {f(r['lax_top_k_us'])} | "
                     + " / ".join(str(r.get(f'{m}_exact', '-')) for m in SHOWN) + " |")
    lines += ["", "Device time per kernel (us per call, profiler trace):", ""]
    for r in sel:
        for m in SHOWN:
            ks = r.get(f"{m}_kernels_us")
            if isinstance(ks, dict):
                top = ", ".join(f"{n} {v:.1f}" for n, v in list(ks.items())[:6])
                lines.append(f"- {r['rows']} rows {r['dtype']} {m}: {top}")
    lines += ["", "score_and_select, B=1, T=131072, d'=16 bf16 keys (us, loop):", "",
              "| heads | keys MB | Pallas scorer | select alone | score_and_select |",
              "|---|---:|---:|---:|---:|"]
    for r in ss:
        lines.append(f"| {r['rows']} | {r['k_bytes_MB']:.1f} | {f(r['pallas_scores_us'])} | "
                     f"{f(r['select_us'])} | {f(r['score_and_select_us'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
