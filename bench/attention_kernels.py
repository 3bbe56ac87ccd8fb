"""Benchmark the decode-attention kernels against their XLA references and the bandwidth floor.

Each timing runs many dependent calls inside one jit (a `lax.fori_loop` whose carry, the query,
is the previous call's output) and divides, so dispatch is amortised. Calls inside one loop step
rotate over several caches / index sets so the bytes read exceed the 50 MB L2 and every call reads
from HBM. The floor is the bytes a call must read (selected or in-length K/V rows, indices,
validity) divided by the read-only bandwidth measured here (`bench.timing.read_bandwidth`).

    python -m bench.attention_kernels [--sweep] [--out DIR]     # from the repo root; writes kernels.json/.md
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from bench.timing import best_seconds, copy_bandwidth, read_bandwidth
from butler_jax.kernels.dense_decode_attention import dense_decode_attention
from butler_jax.kernels.sparse_decode_attention import sparse_decode_attention

B, HKV, D = 1, 8, 128  # Llama-3.1-8B decode, one sequence.
DTYPE = jnp.bfloat16
ROTATE_BYTES = 256 * 2**20  # distinct bytes touched per loop step (>> 50 MB L2).
TARGET_S = 0.03  # seconds per timed loop.
NOMINAL_BW = 3.0e12  # the copy bandwidth the issue quotes for this H100, bytes/s.


def _timed_loop(step, carry0, *args) -> float:
    """Seconds per `step` call: fori_loop over dependent calls, iteration count scaled to TARGET_S."""
    run = jax.jit(lambda n, c, *a: jax.lax.fori_loop(0, n, lambda i, x: step(x, *a), c))
    jax.block_until_ready(run(2, carry0, *args))
    n = 4
    while True:
        t0 = time.perf_counter()
        jax.block_until_ready(run(n, carry0, *args))
        dt = time.perf_counter() - t0
        if dt > TARGET_S / 3 or n >= 1 << 16:
            break
        n *= 4
    best = best_seconds(run, n, carry0, *args)
    return best / n


def _cache(key, t: int, copies: int):
    ks = jax.random.split(key, 2 * copies)
    shape = (B, HKV, t, D)
    return [jax.random.normal(k, shape, DTYPE) for k in ks]


def sparse_case(t: int, k: int, g: int, per_head: bool, impl: str, tuning: dict) -> dict:
    """Time one sparse configuration; bytes counted: gathered K/V rows + int32 indices + bool valid."""
    hq = HKV * g
    hsel = hq if per_head else HKV
    key = jax.random.PRNGKey(t + k + g)
    cache_bytes = 2 * B * HKV * t * D * 2
    sel_bytes = 2 * B * hsel * k * D * 2
    n_cache = min(8, max(1, math.ceil(ROTATE_BYTES / cache_bytes)))
    n_idx = min(8, max(2, math.ceil(ROTATE_BYTES / sel_bytes)))
    calls = max(n_cache, n_idx)
    kv = _cache(key, t, n_cache)
    idx = [jax.random.randint(jax.random.PRNGKey(100 + i), (B, hsel, k), 0, t, jnp.int32)
           for i in range(n_idx)]
    valid = jnp.ones((B, hsel, k), bool)
    q = jax.random.normal(jax.random.PRNGKey(7), (B, hq, D), DTYPE)

    def step(x, kv, idx):
        for c in range(calls):
            kc, vc = kv[2 * (c % n_cache)], kv[2 * (c % n_cache) + 1]
            x = sparse_decode_attention(x, kc, vc, idx[c % n_idx], valid, implementation=impl,
                                        **tuning)
        return x

    sec = _timed_loop(step, q, kv, idx) / calls
    return {"us": sec * 1e6, "bytes": sel_bytes + B * hsel * k * 5}


def dense_case(t: int, g: int, impl: str, tuning: dict) -> dict:
    """Time one dense configuration (all rows at full length); bytes counted: the K/V cache."""
    hq = HKV * g
    cache_bytes = 2 * B * HKV * t * D * 2
    copies = min(8, max(1, math.ceil(ROTATE_BYTES / cache_bytes)))
    kv = _cache(jax.random.PRNGKey(t + g), t, copies)
    lengths = jnp.full((B,), t, jnp.int32)
    q = jax.random.normal(jax.random.PRNGKey(7), (B, hq, D), DTYPE)

    def step(x, kv):
        for c in range(copies):
            x = dense_decode_attention(x, kv[2 * c], kv[2 * c + 1], lengths, implementation=impl,
                                       **tuning)
        return x

    return {"us": _timed_loop(step, q, kv) / copies * 1e6, "bytes": cache_bytes}


def check_correctness() -> list[str]:
    """Max |pallas - xla| on the GPU for a few shapes (bf16), as printable lines."""
    out = []
    key = jax.random.split(jax.random.PRNGKey(3), 5)
    t, k = 5000, 1000
    kc = jax.random.normal(key[0], (2, HKV, t, D), DTYPE)
    vc = jax.random.normal(key[1], (2, HKV, t, D), DTYPE)
    for g, per_head in ((1, False), (4, False), (8, True)):
        hq = HKV * g
        hsel = hq if per_head else HKV
        q = jax.random.normal(key[2], (2, hq, D), DTYPE)
        idx = jax.random.randint(key[3], (2, hsel, k), 0, t, jnp.int32)
        valid = jax.random.bernoulli(key[4], 0.8, (2, hsel, k)).at[1, 0].set(False)
        a = sparse_decode_attention(q, kc, vc, idx, valid, implementation="pallas")
        r = sparse_decode_attention(q, kc, vc, idx, valid, implementation="xla")
        err = float(jnp.abs(a.astype(jnp.float32) - r.astype(jnp.float32)).max())
        out.append(f"sparse G={g} per_head={per_head}: max abs err {err:.2e}")
        lengths = jnp.array([t, 1234], jnp.int32)
        a = dense_decode_attention(q, kc, vc, lengths, implementation="pallas")
        r = dense_decode_attention(q, kc, vc, lengths, implementation="xla")
        err = float(jnp.abs(a.astype(jnp.float32) - r.astype(jnp.float32)).max())
        out.append(f"dense  G={g}: max abs err {err:.2e}")
    return out


def sweep(kind: str) -> tuple[dict, list[dict]]:
    """Two-stage grid search of Pallas tuning on the 128K headline shape (G=4); returns best."""
    run = (lambda tu: sparse_case(131072, 8192, 4, False, "pallas", tu)) if kind == "sparse" else (
        lambda tu: dense_case(131072, 4, "pallas", tu))
    rows = []

    def trial(tu):
        try:
            us = run(tu)["us"]
        except Exception as e:  # a config that does not compile (e.g. too much shared memory)
            print(f"  {kind} {tu}: failed {type(e).__name__}", flush=True)
            return math.inf
        rows.append({**tu, "us": us})
        print(f"  {kind} {tu}: {us:.1f} us", flush=True)
        return us

    stage1 = [{"block_k": bk, "num_warps": w, "num_stages": 2}
              for bk, w in itertools.product((32, 64, 128), (2, 4, 8))]
    best = min(stage1, key=trial)
    stage2 = [{**best, "num_splits": s, "num_stages": st}
              for s, st in itertools.product((16, 32, 64), (2, 3, 4))]
    best2 = min(stage2, key=trial)
    return (best2 if min(r["us"] for r in rows) < math.inf else best), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", action="store_true", help="tune Pallas block sizes/warps/splits first")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind}, jax {jax.__version__}", flush=True)
    for line in check_correctness():
        print(line, flush=True)
    copy_bw = copy_bandwidth()
    bw = read_bandwidth()  # floors: decode attention only reads
    print(f"copy bandwidth: {copy_bw / 1e12:.2f} TB/s, read bandwidth {bw / 1e12:.2f} TB/s",
          flush=True)
    tuned: dict = {"sparse": {}, "dense": {}}
    sweeps = {}
    if args.sweep:
        for kind in ("sparse", "dense"):
            tuned[kind], sweeps[kind] = sweep(kind)
            print(f"best {kind}: {tuned[kind]}", flush=True)
    results = []
    sparse_shapes = [(8192, 1024, 4, False), (32768, 2048, 4, False), (32768, 4096, 4, False),
                     (131072, 1024, 4, False), (131072, 4096, 4, False), (131072, 8192, 1, False),
                     (131072, 8192, 4, False), (131072, 8192, 8, False), (131072, 16384, 4, False),
                     (131072, 8192, 4, True)]
    for t, k, g, per_head in sparse_shapes:
        tu = {k_: v for k_, v in tuned["sparse"].items() if k_ != "us"}
        p = sparse_case(t, k, g, per_head, "pallas", tu)
        x = sparse_case(t, k, g, per_head, "xla", {})
        results.append({"kernel": "sparse", "T": t, "K": k, "G": g,
                        "selection": "per-head" if per_head else "per-kv-head", **_row(p, x, bw)})
        print(_fmt(results[-1]), flush=True)
    for t, g in [(8192, 4), (32768, 4), (131072, 1), (131072, 4), (131072, 8)]:
        tu = {k_: v for k_, v in tuned["dense"].items() if k_ != "us"}
        p = dense_case(t, g, "pallas", tu)
        x = dense_case(t, g, "xla", {})
        results.append({"kernel": "dense", "T": t, "K": t, "G": g, "selection": "-",
                        **_row(p, x, bw)})
        print(_fmt(results[-1]), flush=True)
    meta = {"device": dev.device_kind, "jax": jax.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "copy_bandwidth_TBps": copy_bw / 1e12, "read_bandwidth_TBps": bw / 1e12,
            "B": B, "Hkv": HKV, "D": D, "dtype": "bfloat16",
            "tuning": tuned if args.sweep else {}}
    (out / "kernels.json").write_text(json.dumps({"meta": meta, "results": results,
                                                   "sweeps": sweeps}, indent=1))
    (out / "kernels.md").write_text(_markdown(meta, results))
    print(_markdown(meta, results))


def _row(p: dict, x: dict, bw: float) -> dict:
    floor = p["bytes"] / bw * 1e6
    return {"MB": p["bytes"] / 1e6, "floor_us": floor, "pallas_us": p["us"], "xla_us": x["us"],
            "pallas_pct": 100 * floor / p["us"], "xla_pct": 100 * floor / x["us"],
            "pallas_pct_3TBps": 100 * p["bytes"] / NOMINAL_BW / (p["us"] * 1e-6)}


def _fmt(r: dict) -> str:
    return (f"{r['kernel']:6s} T={r['T']:6d} K={r['K']:6d} G={r['G']} {r['selection']:11s} "
            f"{r['MB']:7.1f} MB floor {r['floor_us']:6.1f} us | pallas {r['pallas_us']:7.1f} us "
            f"({r['pallas_pct']:3.0f}%) | xla {r['xla_us']:7.1f} us ({r['xla_pct']:3.0f}%)")


def _markdown(meta: dict, results: list[dict]) -> str:
    lines = [f"Device: {meta['device']}, jax {meta['jax']}, {meta['date']}; floors from the read "
             f"bandwidth {meta['read_bandwidth_TBps']:.2f} TB/s (copy: "
             f"{meta['copy_bandwidth_TBps']:.2f} TB/s read+write); B={B}, Hkv={HKV}, D={D}, bf16; "
             f"Pallas tuning: {meta['tuning'] or 'kernel defaults'}", "",
             "| kernel | context T | budget K | G | selection | MB read | floor us | Pallas us | "
             "Pallas % floor | Pallas % of 3.0 TB/s | XLA us | XLA % floor |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['kernel']} | {r['T']} | {r['K']} | {r['G']} | {r['selection']} | "
                     f"{r['MB']:.1f} | {r['floor_us']:.1f} | {r['pallas_us']:.1f} | "
                     f"{r['pallas_pct']:.0f}% | {r['pallas_pct_3TBps']:.0f}% | {r['xla_us']:.1f} | "
                     f"{r['xla_pct']:.0f}% |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
