"""GPU smoke check of topk_select(method="histogram") (kernels/topk_select_triton.py), < 2 minutes:
versions, then per variant (digit bits, tokens per program, warps) and rows (8, 32) x dtype (f32,
bf16) at T=131072, K=8192: exact against the lax.top_k reference (also on adversarial rows: ties,
-inf, short lengths), us per call in a jitted loop of dependent calls (`select_topk`'s timing), and
the device time per kernel from a profiler trace (the histogram passes share the name
_hist_kernel: summed). A variant that fails to compile or run prints
its traceback and the others go on. "sampled" (the present default) is timed alongside.

Run from the repo root: `python -m bench.select_triton_check [--budget-s 100]`; writes
select_triton_check.json under $OUT (or .).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bench.select_topk import K, KW, T, _amortised_us, _inputs, _same
from bench.timing import device_event_us
from butler_jax.kernels.topk_select import topk_select, topk_select_reference

VARIANTS = {  # name: (dtypes, histogram_select overrides)
    "default": ((jnp.float32, jnp.bfloat16), {}),
    "bits11": ((jnp.float32,), {"bits": 11}),
    "chunk2048": ((jnp.float32, jnp.bfloat16), {"chunk": 2048}),
    "chunk8192": ((jnp.float32,), {"chunk": 8192}),
    "warps8": ((jnp.float32,), {"warps": 8}),
}


def versions() -> dict:
    out = {"device": jax.devices()[0].device_kind}
    for pkg in ("jax", "jaxlib", "triton", "jax_triton"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out


def _histogram_fn(lengths, overrides: dict):
    """Jitted scores -> (indices, valid): `topk_select` for the default plan, else the entry point
    with the plan overrides."""
    if not overrides:
        return jax.jit(lambda s: topk_select(s, K, lengths, implementation="pallas",
                                             method="histogram", **KW))
    from butler_jax.kernels.topk_select_triton import histogram_select
    return jax.jit(lambda s: histogram_select(s, lengths, K, **KW, **overrides))


def adversarial(dtype, fn_of_lengths) -> bool:
    """8 rows: ties at the threshold, a -inf row, lengths below K and random."""
    rng = np.random.default_rng(1)
    s = rng.standard_normal((8, T)).astype(np.float32)
    s[1] = np.round(s[1])
    s[2] = -np.inf
    s[3] = 0.25
    scores = jnp.asarray(s, dtype)
    lengths = jnp.asarray([T, K // 2, T, T, 5000, T - 1, 9000, 70000], jnp.int32)
    want = topk_select_reference(scores, K, lengths, **KW)
    return _same(fn_of_lengths(lengths)(scores), want)


def check(name: str, dtype, rows: int, overrides: dict) -> dict:
    res = {"variant": name, "overrides": overrides, "dtype": jnp.dtype(dtype).name, "rows": rows}
    try:
        scores, lengths, want = _inputs(rows, dtype)
        fn = _histogram_fn(lengths, overrides)
        t0 = time.perf_counter()
        got = jax.block_until_ready(fn(scores))
        res["compile_run_s"] = round(time.perf_counter() - t0, 2)
        res["exact"] = _same(got, want)
        if rows == 8:
            res["exact_adversarial"] = adversarial(dtype, lambda n: _histogram_fn(n, overrides))
        res["loop_us"] = round(_amortised_us(lambda s: fn(s)[0], scores), 1)
        kernels = device_event_us(fn, scores)
        res["device_us"] = round(sum(kernels.values()), 1)
        res["kernels_us"] = {n: round(v, 1) for n, v in kernels.items()}
    except Exception as e:  # noqa: BLE001 - print the diagnosis, go on with the other variants
        traceback.print_exc()
        res["error"] = f"{type(e).__name__}: {str(e)[:2000]}"
    print(json.dumps(res), flush=True)
    return res


def sampled(dtype, rows: int) -> dict:
    """The present default's loop time, for comparison."""
    res = {"variant": "sampled (reference timing)", "dtype": jnp.dtype(dtype).name, "rows": rows}
    try:
        scores, lengths, _ = _inputs(rows, dtype)
        fn = jax.jit(lambda s: topk_select(s, K, lengths, implementation="pallas",
                                           method="sampled", **KW))
        res["loop_us"] = round(_amortised_us(lambda s: fn(s)[0], scores), 1)
    except Exception as e:  # noqa: BLE001 - a comparison only
        res["error"] = f"{type(e).__name__}: {str(e)[:500]}"
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget-s", type=float, default=100.0,
                    help="start no further variant after this many seconds")
    args = ap.parse_args()
    deadline = time.time() + args.budget_s
    meta = versions()
    print(json.dumps(meta), flush=True)
    results = []
    for name, (dtypes, overrides) in VARIANTS.items():
        for dtype in dtypes:
            for rows in (8, 32):
                if time.time() > deadline:
                    print(f"budget spent: skipped {name} {jnp.dtype(dtype).name} {rows} rows")
                    continue
                results.append(check(name, dtype, rows, overrides))
        if name == "default":
            results += [sampled(dt, 8) for dt in (jnp.float32, jnp.bfloat16)]
    out = Path(os.environ.get("OUT", "."))
    out.mkdir(parents=True, exist_ok=True)
    (out / "select_triton_check.json").write_text(json.dumps({**meta, "results": results},
                                                             indent=1))
    print("\nvariant     dtype     rows  exact  adv   loop_us  device_us  kernels")
    for r in results:
        if "overrides" not in r:
            print(f"{r['variant']:<28}{r['dtype']:<10}{r['rows']:<6}"
                  f"{r.get('loop_us', r.get('error', '')[:200])}")
            continue
        print(f"{r['variant']:<12}{r['dtype']:<10}{r['rows']:<6}{str(r.get('exact', '-')):<7}"
              f"{str(r.get('exact_adversarial', '-')):<6}{str(r.get('loop_us', '-')):<9}"
              f"{str(r.get('device_us', '-')):<11}"
              + (r.get("error", "")[:200] or json.dumps(r.get("kernels_us"))))


if __name__ == "__main__":
    main()
