"""Token-selection benchmark: topk_select (Pallas: sampled bracket "sampled" and "radix"; "auto"
picks sampled from 16 rows) vs its
lax.top_k reference vs bare lax.top_k, plus a sweep of the sampled path's sizes (`--sweep`).

Each figure is one jitted lax.fori_loop of N dependent calls (the carry writes a value derived
from the last output into column 0 of the scores, so nothing is hoisted), timed end to end and
divided by N. Run: `python bench/select_topk.py [--sweep]` (writes select.md / select.json under $OUT
or .).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.timing import best_seconds  # noqa: E402
from butler_jax.kernels.score_select import score_and_select  # noqa: E402
from butler_jax.kernels.topk_select import _plan, _radix_threshold, _sampled_select, topk_select  # noqa: E402

K = 8192
ITERS = 50


def _amortised_us(fn, scores: jax.Array) -> float:
    """fn: scores [R, T] -> int32 array; mean us per call over ITERS dependent calls."""
    def body(_, s):
        out = fn(s)
        return s.at[:, 0].set((out.reshape(-1)[0] % 2).astype(s.dtype))

    loop = jax.jit(lambda s: jax.lax.fori_loop(0, ITERS, body, s))
    loop(scores).block_until_ready()
    return best_seconds(loop, scores) / ITERS * 1e6


def _try_us(fn, scores: jax.Array) -> float:
    """_amortised_us, or NaN (error printed) when the variant fails to compile or run."""
    try:
        return _amortised_us(fn, scores)
    except Exception as e:  # noqa: BLE001 - a failing variant must not hide the others
        print(f"FAILED: {type(e).__name__}: {str(e)[:2000]}", flush=True)
        return float("nan")


def _exact(fn, scores: jax.Array, want: tuple[jax.Array, jax.Array]) -> bool | None:
    """Whether fn(scores) equals want exactly; None when fn fails to compile or run."""
    try:
        got = fn(scores)
    except Exception:  # noqa: BLE001 - the timing of the same variant already printed the error
        return None
    return all(np.array_equal(np.asarray(g), np.asarray(w)) for g, w in zip(got, want))


def bench_select(rows: int, t: int, dtype) -> dict:
    key = jax.random.PRNGKey(rows * t)
    scores = jax.random.normal(key, (rows, t), jnp.float32).astype(dtype)
    lengths = jnp.full((rows,), t, jnp.int32)
    kw = dict(n_sink=4, n_recent=64)
    sel = {m: jax.jit(lambda s, m=m: topk_select(s, K, lengths, implementation="pallas", method=m,
                                                 **kw)) for m in ("sampled", "radix")}
    ref = jax.jit(lambda s: topk_select(s, K, lengths, implementation="xla", **kw))
    want = ref(scores)
    sampled = jax.jit(lambda s: _sampled_select(s, lengths, K, interpret=False, plan=_plan(t, K),
                                                **kw))
    try:
        rows_ok = int(np.asarray(sampled(scores)[1]).sum())
    except Exception:  # noqa: BLE001 - reported by the "sampled" timing below
        rows_ok = -1
    return {
        "rows": rows, "T": t, "dtype": jnp.dtype(dtype).name, "k": K,
        "sampled_us": _try_us(lambda s: sel["sampled"](s)[0], scores),
        "radix_us": _try_us(lambda s: sel["radix"](s)[0], scores),
        "radix_passes_only_us": _amortised_us(
            lambda s: _radix_threshold(s, lengths, K, block_t=2048, interpret=False, **kw), scores),
        "xla_reference_us": _amortised_us(lambda s: ref(s)[0], scores),
        "lax_top_k_us": _amortised_us(lambda s: jax.lax.top_k(s, K)[1], scores),
        "sampled_rows_ok": rows_ok,
        "sampled_exact": _exact(sel["sampled"], scores, want),
        "radix_exact": _exact(sel["radix"], scores, want),
    }


SWEEP = [dict(), dict(small_warps=8), dict(sample=2048), dict(step=1), dict(lanes=16384)]


def sweep_sampled(rows: int = 32, t: int = 131072) -> list[dict]:
    """The sampled path alone under plan overrides (f32, normal scores): us and exactness."""
    scores = jax.random.normal(jax.random.PRNGKey(7), (rows, t), jnp.float32)
    lengths = jnp.full((rows,), t, jnp.int32)
    want = topk_select(scores, K, lengths, n_sink=4, n_recent=64, implementation="xla")
    out = []
    for ov in SWEEP:
        plan = _plan(t, K, **ov)
        fn = jax.jit(lambda s, plan=plan: _sampled_select(s, lengths, K, n_sink=4, n_recent=64,
                                                          interpret=False, plan=plan))
        us = _try_us(lambda s: fn(s)[0][0], scores)
        exact = _exact(lambda s: fn(s)[0], scores, want)
        n_ok = int(np.asarray(fn(scores)[1]).sum()) if exact is not None else 0
        r = {"overrides": ov, "plan": plan._asdict(), "us": us, "rows_ok": n_ok, "exact": exact}
        print(json.dumps(r), flush=True)
        out.append(r)
    return out


def bench_score_select(kdtype: str, impl: str) -> dict:
    b, s, t, d = 1, 32, 131072, 16
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
    q = jax.random.normal(k1, (b, s, d), jnp.bfloat16)
    kf = jax.random.normal(k2, (b, s, t, d), jnp.float32)
    scale = None
    if kdtype == "int8":
        kimp = jnp.clip(jnp.round(kf * 32), -127, 127).astype(jnp.int8)
        scale = jax.random.uniform(k3, (b, s, t), jnp.float32, 0.5, 1.5) / 32
    else:
        kimp = kf.astype(jnp.bfloat16)
    lengths = jnp.full((b,), t, jnp.int32)

    def fn(qq):
        return score_and_select(qq, kimp, lengths, K, k_scale=scale, n_sink=4, n_recent=64,
                                implementation=impl)[0]

    return {"rows": s, "T": t, "k_dtype": kdtype, "impl": impl, "us": _amortised_us(fn, q)}


def main() -> None:
    do_sweep = "--sweep" in sys.argv[1:]
    out = Path(os.environ.get("OUT", "."))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    meta = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "PYTHONUNBUFFERED=1 python bench/select_topk.py" + " --sweep" * do_sweep,
            "k": K, "iters": ITERS}
    sw = sweep_sampled() if do_sweep else []  # first: the most informative part of a cut-short run
    sel = []
    for t in (32768, 65536, 131072):
        for rows in (8, 32):
            for dtype in (jnp.float32, jnp.bfloat16):
                r = bench_select(rows, t, dtype)
                print(json.dumps(r), flush=True)
                sel.append(r)
    ss = []
    for kd in ("bf16", "int8"):
        for impl in ("pallas", "xla"):
            r = bench_score_select(kd, impl)
            print(json.dumps(r), flush=True)
            ss.append(r)
    lines = [f"# Token selection, k={K} ({meta['device']}, jax {meta['jax']}, {meta['date']}, "
             f"commit {commit})", "", f"Command: `{meta['command']}`; us per call, "
             f"{ITERS} dependent calls in one jit. n_sink=4, n_recent=64.", "",
             "| rows x T | dtype | sampled | radix | radix passes alone | xla reference "
             "| lax.top_k | rows on sampled path | exact (sampled / radix) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in sel:
        lines.append(f"| {r['rows']} x {r['T']} | {r['dtype']} | {r['sampled_us']:.1f} | "
                     f"{r['radix_us']:.1f} | {r['radix_passes_only_us']:.1f} | "
                     f"{r['xla_reference_us']:.1f} | {r['lax_top_k_us']:.1f} | "
                     f"{r['sampled_rows_ok']}/{r['rows']} | {r['sampled_exact']} / {r['radix_exact']} |")
    lines += ["", "score_and_select, B=1, S=32, T=131072, d'=16:", "",
              "| keys | impl | us |", "|---|---|---:|"]
    lines += [f"| {r['k_dtype']} | {r['impl']} | {r['us']:.1f} |" for r in ss]
    if sw:
        lines += ["", "Sampled path alone, 32 x 131072 f32, plan overrides:", "",
                  "| overrides | us | rows ok | exact |", "|---|---:|---:|---|"]
        lines += [f"| {r['overrides'] or 'default'} | {r['us']:.1f} | {r['rows_ok']} | {r['exact']} |"
                  for r in sw]
    text = "\n".join(lines) + "\n"
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "select.md").write_text(text)
    (out / "select.json").write_text(json.dumps({**meta, "select": sel, "score_select": ss, "sweep": sw},
                                                indent=1))


if __name__ == "__main__":
    main()
