"""Token-selection benchmark: exact top-8192 of 131072 keys per row, the Pallas methods of
`kernels.topk_select` against lax.top_k, the lax.top_k reference and the bytes floor (the scores
read once at the read-only bandwidth of `bench.timing.read_bandwidth`), plus `score_and_select`.

Each wall figure is one jitted lax.fori_loop of ITERS dependent calls (the carry writes a value
derived from the last output into column 0 of the input, so nothing is hoisted), timed end to
end and divided by ITERS; the 2-16 MB of scores stay in L2 across calls, as they do in decode
after scoring. `--stages` adds, per method, the device time of each kernel and of the whole
call from a profiler trace (`_kernel_us`), the loop's own cost, and plan variants of "bucket".
Run from the repo root: `python -m bench.select_topk [--stages]` (writes select[_stages].md /
.json under $OUT or .). COMMIT in the environment names the tree's commit where .git is absent.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bench.timing import best_seconds, copy_bandwidth, read_bandwidth
from butler_jax.kernels.bucket_select import bucket_plan, bucket_select_paths
from butler_jax.kernels.score_select import importance_scores, score_and_select
from butler_jax.kernels.topk_select import METHODS, topk_select

K = 8192
T = 131072
ITERS = 50
KW = dict(n_sink=4, n_recent=64)
PALLAS = tuple(m for m in METHODS if m != "auto")
STAGE_METHODS = tuple(m for m in PALLAS if m != "hist")
VARIANTS = [dict(sample=1024), dict(sample=4096), dict(nb=8), dict(nb=32), dict(warps=4),
            dict(warps=16), dict(step=1), dict(step=3), dict(block=256), dict(block=1024),
            dict(programs=256), dict(programs=1024)]


def _amortised_us(fn, x: jax.Array, unroll: bool = False) -> float:
    """fn: x -> array; mean us per call over ITERS dependent calls in one jit."""
    def body(_, s):
        out = fn(s)
        return s.at[:, 0].set((out.reshape(-1)[0] % 2).astype(s.dtype))

    loop = jax.jit(lambda s: jax.lax.fori_loop(0, ITERS, body, s, unroll=unroll))
    loop(x).block_until_ready()
    return best_seconds(loop, x) / ITERS * 1e6


def _kernel_us(fn, x: jax.Array, calls: int = 20) -> dict[str, float]:
    """Device us per call of fn(x) from a profiler trace: each GPU event name (kernels and XLA
    ops, keyed "line: name") and "module" (the whole call's device span, gaps included)."""
    jax.block_until_ready(fn(x))
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(calls):
                jax.block_until_ready(fn(x))
        (path,) = glob.glob(f"{d}/**/*.xplane.pb", recursive=True)
        data = jax.profiler.ProfileData.from_file(path)
    per = collections.defaultdict(float)
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            for e in line.events:
                key = "module" if line.name == "XLA Modules" else f"{line.name}: {e.name}"
                per[key] += e.duration_ns / 1e3 / calls
    return dict(sorted(per.items(), key=lambda kv: -kv[1]))


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


def bench_select(rows: int, dtype, read_bw: float) -> dict:
    scores, lengths, want = _inputs(rows, dtype)
    res = {"rows": rows, "T": T, "dtype": jnp.dtype(dtype).name, "k": K,
           "floor_us": rows * T * jnp.dtype(dtype).itemsize / read_bw * 1e6}
    for m in PALLAS:
        fn = _method_fn(m, lengths)
        res[f"{m}_us"] = _try(_amortised_us, lambda s: fn(s)[0], scores)
        res[f"{m}_exact"] = _try(lambda: _same(fn(scores), want))
    ref = jax.jit(lambda s: topk_select(s, K, lengths, implementation="xla", **KW))
    res["xla_reference_us"] = _amortised_us(lambda s: ref(s)[0], scores)
    res["lax_top_k_us"] = _amortised_us(lambda s: jax.lax.top_k(s, K)[1], scores)
    res["bucket_plan"] = bucket_plan(rows, T, K)._asdict()
    return res


def _log(path: Path, obj: dict) -> None:
    """Print obj as one JSON line and append it to path (kept if the run is cut short)."""
    line = json.dumps(obj)
    print(line, flush=True)
    with path.open("a") as fh:
        fh.write(line + "\n")


def bench_stages(rows: int, dtype, methods, deadline: float, log: Path) -> dict:
    """Per method: wall us (the loop), device us per kernel and per call (trace), exactness."""
    scores, lengths, want = _inputs(rows, dtype)
    res = {"rows": rows, "dtype": jnp.dtype(dtype).name, "methods": {}}
    for m in methods:
        if time.time() > deadline:
            break
        fn = _method_fn(m, lengths)
        res["methods"][m] = {"wall_us": _try(_amortised_us, lambda s: fn(s)[0], scores),
                             "exact": _try(lambda: _same(fn(scores), want)),
                             "kernels_us": _try(_kernel_us, fn, scores)}
        _log(log, {"rows": rows, "dtype": res["dtype"], m: res["methods"][m]})
    return res


def bench_variants(rows: int, dtype, deadline: float, log: Path) -> list[dict]:
    """bucket plan variants: wall us, exactness, whether every row took the fast path."""
    scores, lengths, want = _inputs(rows, dtype)
    out = []
    for ov in [{}] + VARIANTS:
        if time.time() > deadline:
            break
        plan = bucket_plan(rows, T, K, **ov)
        fn = jax.jit(lambda s, plan=plan: bucket_select_paths(s, lengths, K, KW["n_sink"],
                                                              KW["n_recent"], False, plan))
        r = {"rows": rows, "dtype": jnp.dtype(dtype).name, "variant": ov, "plan": plan._asdict(),
             "wall_us": _try(_amortised_us, lambda s: fn(s)[0], scores),
             "exact": _try(lambda: _same(fn(scores)[:2], want)),
             "fast_rows": _try(lambda: int(np.asarray(fn(scores)[2]).sum()))}
        if not ov:
            r["wall_unrolled_us"] = _try(_amortised_us, lambda s: fn(s)[0], scores, True)
        _log(log, r)
        out.append(r)
    return out


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
    ap.add_argument("--stages", action="store_true", help="per-kernel profile and plan variants")
    ap.add_argument("--budget-s", type=float, default=130.0, help="skip what starts after this")
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
    if args.stages:
        log = out / "select_stages.jsonl"
        res = {**meta, "loop": [bench_loop(r) for r in (8, 32)]}
        print(json.dumps(res["loop"]), flush=True)
        res["stages"] = [bench_stages(r, dt, STAGE_METHODS if dt == jnp.float32 else ("bucket",),
                                      deadline, log)
                         for r in (8, 32) for dt in (jnp.float32, jnp.bfloat16)]
        res["variants"] = [v for r in (8, 32) for v in bench_variants(r, jnp.float32, deadline,
                                                                      log)]
        (out / "select_stages.json").write_text(json.dumps(res, indent=1))
        return
    read_bw, copy_bw = read_bandwidth(), copy_bandwidth()
    print(f"read {read_bw / 1e12:.2f} TB/s, copy {copy_bw / 1e12:.2f} TB/s", flush=True)
    meta.update(read_bandwidth_TBps=read_bw / 1e12, copy_bandwidth_TBps=copy_bw / 1e12)
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
    (out / "select.md").write_text(text)
    (out / "select.json").write_text(json.dumps({**meta, "select": sel, "score_select": ss},
                                                indent=1))


def _markdown(meta: dict, sel: list[dict], ss: list[dict]) -> str:
    def f(x) -> str:
        return f"{x:.1f}" if isinstance(x, float) else str(x)

    lines = [f"# Token selection, k={K} of T={T} ({meta['device']}, jax {meta['jax']}, "
             f"{meta['date']}, commit {meta['commit']})", "",
             f"Command: `{meta['command']}`; us per call, {ITERS} dependent calls in one jit; "
             f"n_sink=4, n_recent=64. Floor: the scores read once at the read bandwidth "
             f"{meta['read_bandwidth_TBps']:.2f} TB/s (copy {meta['copy_bandwidth_TBps']:.2f} "
             f"TB/s read+write).", "",
             "| rows | dtype | floor | " + " | ".join(PALLAS) + " | xla reference | lax.top_k "
             f"| exact ({' / '.join(PALLAS)}) |", "|---|---|---:|" + "---:|" * (len(PALLAS) + 2)
             + "---|"]
    for r in sel:
        lines.append(f"| {r['rows']} | {r['dtype']} | {f(r['floor_us'])} | "
                     + " | ".join(f(r[f'{m}_us']) for m in PALLAS)
                     + f" | {f(r['xla_reference_us'])} | {f(r['lax_top_k_us'])} | "
                     + " / ".join(str(r[f'{m}_exact']) for m in PALLAS) + " |")
    lines += ["", "score_and_select, B=1, T=131072, d'=16 bf16 keys (us):", "",
              "| heads | keys MB | Pallas scorer | select alone | score_and_select |",
              "|---|---:|---:|---:|---:|"]
    for r in ss:
        lines.append(f"| {r['rows']} | {r['k_bytes_MB']:.1f} | {f(r['pallas_scores_us'])} | "
                     f"{f(r['select_us'])} | {f(r['score_and_select_us'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
