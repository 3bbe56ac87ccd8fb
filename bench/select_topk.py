"""Token-selection benchmark: exact top-8192 per row, the kernels of `kernels.topk_select`
("hist" = `kernels.hist_select`, the default; "sampled"; "radix") and plan variants of "hist",
against lax.top_k, the lax.top_k reference and the bytes floor (the scores read once at the
read-only bandwidth of `bench.timing.read_bandwidth`), plus `score_and_select` and its parts.

Each figure is one jitted lax.fori_loop of N dependent calls (the carry writes a value derived
from the last output into column 0 of the input, so nothing is hoisted), timed end to end and
divided by N; the 2-8 MB of scores stay in L2 across calls, as they do in decode after scoring.
Run from the repo root: `python -m bench.select_topk` (writes select.md / select.json under
$OUT or .). COMMIT in the environment names the tree's commit where .git is absent.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bench.timing import best_seconds, copy_bandwidth, read_bandwidth
from butler_jax.kernels.hist_select import hist_plan, hist_select
from butler_jax.kernels.score_select import importance_scores, score_and_select
from butler_jax.kernels.topk_select import topk_select

K = 8192
T = 131072
ITERS = 50
KW = dict(n_sink=4, n_recent=64)
HIST_VARIANTS = [dict(programs=512), dict(warps=8), dict(onehot="bfloat16")]


def _amortised_us(fn, x: jax.Array) -> float:
    """fn: x -> array; mean us per call over ITERS dependent calls."""
    def body(_, s):
        out = fn(s)
        return s.at[:, 0].set((out.reshape(-1)[0] % 2).astype(s.dtype))

    loop = jax.jit(lambda s: jax.lax.fori_loop(0, ITERS, body, s))
    loop(x).block_until_ready()
    return best_seconds(loop, x) / ITERS * 1e6


def _try(fn, *args):
    """fn(*args), or NaN / None with the error printed when the variant fails to compile or run."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - a failing variant must not hide the others
        print(f"FAILED: {type(e).__name__}: {str(e)[:1500]}", flush=True)
        return float("nan")


def _same(got, want) -> bool:
    return all(np.array_equal(np.asarray(g), np.asarray(w)) for g, w in zip(got, want))


def bench_select(rows: int, dtype, read_bw: float) -> dict:
    scores = jax.random.normal(jax.random.PRNGKey(rows), (rows, T), jnp.float32).astype(dtype)
    lengths = jnp.full((rows,), T, jnp.int32)
    want = topk_select(scores, K, lengths, implementation="xla", **KW)
    res = {"rows": rows, "T": T, "dtype": jnp.dtype(dtype).name, "k": K,
           "floor_us": rows * T * jnp.dtype(dtype).itemsize / read_bw * 1e6}
    older = ("sampled", "radix") if dtype == jnp.float32 else ()  # the earlier kernels: f32 only
    for m in ("hist",) + older:
        fn = jax.jit(lambda s, m=m: topk_select(s, K, lengths, implementation="pallas", method=m,
                                                **KW))
        res[f"{m}_us"] = _try(_amortised_us, lambda s: fn(s)[0], scores)
        res[f"{m}_exact"] = _try(lambda: _same(fn(scores), want))
    for ov in HIST_VARIANTS if dtype == jnp.float32 else ():
        plan = hist_plan(rows, T, **ov)
        fn = jax.jit(lambda s, plan=plan: hist_select(s, K, lengths, plan=plan, **KW))
        name = "hist_" + "_".join(f"{a}{b}" for a, b in ov.items())
        res[f"{name}_us"] = _try(_amortised_us, lambda s: fn(s)[0], scores)
        res[f"{name}_exact"] = _try(lambda: _same(fn(scores), want))
    ref = jax.jit(lambda s: topk_select(s, K, lengths, implementation="xla", **KW))
    res["xla_reference_us"] = _amortised_us(lambda s: ref(s)[0], scores)
    res["lax_top_k_us"] = _amortised_us(lambda s: jax.lax.top_k(s, K)[1], scores)
    res["hist_plan"] = hist_plan(rows, T)._asdict()
    return res


def bench_score_select(s: int) -> dict:
    """B=1, S heads, T, d'=16 bf16 keys: scoring alone (einsum, multiply-sum, Pallas), the
    selection alone, score_and_select (Pallas scorer + hist), and compositions."""
    b, d = 1, 16
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    q = jax.random.normal(k1, (b, s, d), jnp.bfloat16)
    kimp = jax.random.normal(k2, (b, s, T, d), jnp.bfloat16)
    lengths = jnp.full((b,), T, jnp.int32)
    rows = jnp.full((b * s,), T, jnp.int32)

    def einsum(qq):
        return importance_scores(qq, kimp)

    def pallas(qq):
        return importance_scores(qq, kimp, implementation="pallas")

    def mulsum(qq):
        return jnp.sum(qq[:, :, None, :].astype(jnp.float32) * kimp.astype(jnp.float32), -1)

    scores = einsum(q).reshape(b * s, T)
    res = {"rows": s, "T": T, "k_bytes_MB": kimp.size * 2 / 1e6,
           "einsum_us": _amortised_us(einsum, q), "mulsum_us": _amortised_us(mulsum, q),
           "pallas_scores_us": _try(_amortised_us, pallas, q),
           "select_hist_us": _try(_amortised_us,
               lambda x: topk_select(x, K, rows, implementation="pallas", **KW)[0], scores),
           "score_and_select_us": _try(_amortised_us,
               lambda qq: score_and_select(qq, kimp, lengths, K, implementation="pallas",
                                           **KW)[0], q)}
    res["einsum_then_sampled_us"] = _try(_amortised_us, lambda qq: topk_select(
        einsum(qq).reshape(b * s, T), K, rows, implementation="pallas", method="sampled",
        **KW)[0], q)
    res["mulsum_then_hist_us"] = _try(_amortised_us, lambda qq: topk_select(
        mulsum(qq).reshape(b * s, T), K, rows, implementation="pallas", **KW)[0], q)
    res["einsum_then_hist_us"] = _try(_amortised_us, lambda qq: topk_select(
        einsum(qq).reshape(b * s, T), K, rows, implementation="pallas", **KW)[0], q)
    return res


def main() -> None:
    out = Path(os.environ.get("OUT", "."))
    commit = os.environ.get("COMMIT") or subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True,
        cwd=Path(__file__).parent).stdout.strip()
    read_bw, copy_bw = read_bandwidth(), copy_bandwidth()
    print(f"read {read_bw / 1e12:.2f} TB/s, copy {copy_bw / 1e12:.2f} TB/s", flush=True)
    meta = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "PYTHONUNBUFFERED=1 python -m bench.select_topk", "k": K, "iters": ITERS,
            "read_bandwidth_TBps": read_bw / 1e12, "copy_bandwidth_TBps": copy_bw / 1e12}
    sel = []
    for rows in (8, 32):
        for dtype in (jnp.float32, jnp.bfloat16):
            r = bench_select(rows, dtype, read_bw)
            print(json.dumps(r), flush=True)
            sel.append(r)
    ss = []
    for s in (8, 32):
        r = bench_score_select(s)
        print(json.dumps(r), flush=True)
        ss.append(r)
    text = _markdown(meta, sel, ss)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "select.md").write_text(text)
    (out / "select.json").write_text(json.dumps({**meta, "select": sel, "score_select": ss},
                                                indent=1))


def _markdown(meta: dict, sel: list[dict], ss: list[dict]) -> str:
    var = ["hist_" + "_".join(f"{a}{b}" for a, b in ov.items()) for ov in HIST_VARIANTS]
    lines = [f"# Token selection, k={K} of T={T} ({meta['device']}, jax {meta['jax']}, "
             f"{meta['date']}, commit {meta['commit']})", "",
             f"Command: `{meta['command']}`; us per call, {ITERS} dependent calls in one jit; "
             f"n_sink=4, n_recent=64. Floor: the scores read once at the read bandwidth "
             f"{meta['read_bandwidth_TBps']:.2f} TB/s (copy {meta['copy_bandwidth_TBps']:.2f} "
             f"TB/s read+write).", "",
             "| rows | dtype | floor | hist | sampled | radix | xla reference | lax.top_k "
             "| exact (hist / sampled / radix) |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    def f(x) -> str:
        return f"{x:.1f}" if isinstance(x, float) else str(x)

    for r in sel:
        lines.append(f"| {r['rows']} | {r['dtype']} | {f(r['floor_us'])} | {f(r['hist_us'])} | "
                     f"{f(r.get('sampled_us', '-'))} | {f(r.get('radix_us', '-'))} | {f(r['xla_reference_us'])} | "
                     f"{f(r['lax_top_k_us'])} | {r['hist_exact']} / {r.get('sampled_exact', '-')} / "
                     f"{r.get('radix_exact', '-')} |")
    lines += ["", "hist plan variants (us, exact):", "",
              "| rows | dtype | " + " | ".join(var) + " |", "|---|---|" + "---|" * len(var)]
    for r in (r for r in sel if r["dtype"] == "float32"):
        lines.append(f"| {r['rows']} | {r['dtype']} | " + " | ".join(
            f"{f(r[v + '_us'])} {r[v + '_exact']}" for v in var) + " |")
    lines += ["", "score_and_select, B=1, T=131072, d'=16 bf16 keys (us):", "",
              "| heads | keys MB | einsum | multiply-sum | Pallas scorer | select alone (hist) "
              "| score_and_select (Pallas + hist) | einsum + sampled | einsum + hist "
              "| multiply-sum + hist |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in ss:
        lines.append(f"| {r['rows']} | {r['k_bytes_MB']:.1f} | {f(r['einsum_us'])} | "
                     f"{f(r['mulsum_us'])} | {f(r['pallas_scores_us'])} | "
                     f"{f(r['select_hist_us'])} | {f(r['score_and_select_us'])} | "
                     f"{f(r['einsum_then_sampled_us'])} | {f(r['einsum_then_hist_us'])} | "
                     f"{f(r['mulsum_then_hist_us'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
