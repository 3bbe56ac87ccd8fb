"""A/B of issue 25's loop helper (branch `loop`) against main a28ce62, one H200 run: the
neighbour-fetch expansion and the sparse decode-attention kernel. The old files are the ones of
a28ce62, put at _ab_old/ for the run (`git show a28ce62:<path>`)."""

import importlib.util
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import bench.attention_kernels as ak
from bench.timing import read_bandwidth
from butler_jax.sparsity import neighbors as new_nb


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


old_nb = load("old_neighbors", "_ab_old/neighbors.py")
old_sp = load("old_sparse", "_ab_old/sparse_decode_attention.py")
new_sp = ak.sparse_decode_attention
T, K, HKV = 131086, 8192, 8


def per_call(step, carry, n=200):
    run = jax.jit(lambda c: jax.lax.fori_loop(0, n, lambda i, x: step(x), c))
    jax.block_until_ready(run(carry))
    best = 1e9
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(run(carry))
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


print(jax.devices()[0].device_kind, jax.__version__, flush=True)
rng = np.random.default_rng(0)
end = T - 14 - 512
idx = np.sort(np.stack([rng.choice(end, K, replace=False) for _ in range(HKV)]), -1).astype(np.int32)[None]
idx, ok, e = jnp.asarray(idx), jnp.asarray(idx >= 128), jnp.full((1, 1), end, jnp.int32)
expand = {"old (a28ce62)": lambda i, o: old_nb.expand_neighbors(i, o, e, 2 * K, ascending=True),
          "new": lambda i, o: new_nb.expand_neighbors(i, o, e, 2 * K, n_tokens=T, ascending=True)}
sets = {}
for name, f in expand.items():
    w, wo = jax.jit(f)(idx, ok)
    sets[name] = [sorted(np.asarray(w[0, h])[np.asarray(wo[0, h])].tolist()) for h in range(HKV)]

    def step(c, f=f):
        i, o, _ = c
        w, wo = f(i, o)
        return i.at[..., 0].set(w[..., 0]), o, w  # slot 0 is I's first entry: same value, a real dependence

    print(f"expand_neighbors {name}: {per_call(step, (idx, ok, jnp.zeros((1, HKV, 2 * K), jnp.int32))):.1f} us "
          f"(1 x {HKV} lists of {K})", flush=True)
print("expansion sets equal:", sets["old (a28ce62)"] == sets["new"], flush=True)

bw = read_bandwidth()
print(f"read bandwidth {bw / 1e12:.2f} TB/s", flush=True)
for t, k, variants in [(131072, 8192, [("old", {}), ("new", {}), ("new", {"num_splits": 16})]),
                       (131072, 1024, [("old", {}), ("new", {})])]:
    for which, tuning in variants:
        ak.sparse_decode_attention = old_sp.sparse_decode_attention if which == "old" else new_sp
        r = ak.sparse_case(t, k, 4, False, "pallas", tuning)
        floor = r["bytes"] / bw * 1e6
        print(f"sparse T={t} K={k} G=4 {which} {tuning or 'defaults'}: {r['us']:.1f} us, floor {floor:.1f} us "
              f"({100 * floor / r['us']:.0f} %)", flush=True)
ak.sparse_decode_attention = new_sp
for line in ak.check_correctness():
    print("new kernel", line, flush=True)
