"""End-to-end decode latency: ms/token of the whole jitted generation loop, dense vs sparse policies.

Llama-3.1-8B shapes with random weights (speed does not depend on values); the KV cache is filled
with random keys/values up to the context length (no prefill), then `decode_loop` generates
`--steps` tokens greedily in one `lax.while_loop`. Beside each figure: the bandwidth floor (bytes
that must be read per token / measured device copy bandwidth).

    python bench/decode_latency.py --contexts 32768,65536,131072 --batch 1 --methods dense,oracle,tokenbutler
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np

from butler_jax.cache import KVCache
from butler_jax.config import ModelConfig, PredictorConfig, load_yaml, section
from butler_jax.decode import decode_loop
from butler_jax.models.llama import LlamaForCausalLM, init_params
from butler_jax.models.predictor_longctx import LongctxPredictor
from butler_jax.sampling import SamplingConfig
from butler_jax.sparsity import SparsityConfig, make_policy


def copy_bandwidth(nbytes: int = 2 << 30, reps: int = 20) -> float:
    """Device copy bandwidth in bytes/s (read + write counted), dispatch amortised in a fori_loop."""
    x = jnp.ones((nbytes // 4,), jnp.float32)

    @jax.jit
    def loop(x):
        return jax.lax.fori_loop(0, reps, lambda i, y: y * 1.0000001 + 1e-9, x)

    loop(x).block_until_ready()
    start = time.perf_counter()
    loop(x).block_until_ready()
    return 2 * nbytes * reps / (time.perf_counter() - start)


def param_bytes(params) -> int:
    return sum(int(np.prod(p.shape)) * p.dtype.itemsize for p in jax.tree_util.tree_leaves(params))


def random_cache(cfg: ModelConfig, batch: int, capacity: int, length: int, key) -> KVCache:
    shape = (batch, cfg.num_key_value_heads, capacity, cfg.resolved_head_dim)
    make = jax.jit(lambda k: jax.random.normal(k, shape, jnp.bfloat16))
    keys = jax.random.split(key, 2 * cfg.num_hidden_layers)
    layers = range(cfg.num_hidden_layers)
    return KVCache(tuple(make(keys[2 * i]) for i in layers), tuple(make(keys[2 * i + 1]) for i in layers),
                   jnp.full((batch,), length, jnp.int32))


def time_decode(model, params, cache, policy, state, steps: int) -> tuple[float, KVCache]:
    """Seconds per generated token (the first call compiles; the second is timed). The cache is
    donated and returned, so no copy of it is ever held."""

    def run(p, c, s, t):
        out, _, cache = decode_loop(model, p, t, c, s, jax.random.PRNGKey(0), policy=policy, max_new_tokens=steps,
                                    sampling=SamplingConfig(), stop_tokens=(), return_cache=True)
        return out, cache._replace(lengths=c.lengths)

    run = jax.jit(run, donate_argnums=(1,))
    first = jnp.zeros((cache.lengths.shape[0],), jnp.int32)
    _, cache = jax.block_until_ready(run(params, cache, state, first))
    start = time.perf_counter()
    _, cache = jax.block_until_ready(run(params, cache, state, first))
    return (time.perf_counter() - start) / (steps - 1), cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/llama-3.1-8b.yaml")
    parser.add_argument("--contexts", default="32768,65536,131072")
    parser.add_argument("--batch", default="1")
    parser.add_argument("--budget", type=int, default=8192)
    parser.add_argument("--methods", default="dense,oracle,tokenbutler_i1,tokenbutler_i4",
                        help="dense, oracle, tokenbutler_i<N> (long-context predictor, predict_interval N)")
    parser.add_argument("--steps", type=int, default=33)
    parser.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    args = parser.parse_args()

    cfg = dataclasses.replace(section(load_yaml(args.config), "model", ModelConfig), source="random", dtype="bfloat16")
    model = LlamaForCausalLM(cfg)
    params = jax.jit(lambda: init_params(cfg))()
    weights = param_bytes(params)
    bandwidth = copy_bandwidth()
    print(f"device {jax.devices()[0].device_kind}; copy bandwidth {bandwidth / 1e12:.2f} TB/s; weights {weights / 1e9:.2f} GB")
    pcfg = PredictorConfig(kind="longctx", dDash=16, intdim=512, producer_frequency=4)
    predictor = LongctxPredictor(pcfg, cfg)
    pparams = jax.jit(lambda: predictor.init(jax.random.PRNGKey(1), jnp.ones((1, 1, cfg.hidden_size)),
                                              jnp.ones((1, 1, cfg.num_key_value_heads, cfg.resolved_head_dim)))["params"])()
    pparams = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), pparams)
    rows = []
    kv_row = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.resolved_head_dim * 2  # K+V bytes per token
    for batch in map(int, args.batch.split(",")):
        for context in map(int, args.contexts.split(",")):
            capacity = context + args.steps + 1
            cache = random_cache(cfg, batch, capacity, context, jax.random.PRNGKey(context))
            for label in args.methods.split(","):
                method, _, interval = label.partition("_i")
                sparsity = SparsityConfig(method=method, budget=str(args.budget), n_sink=128, n_window=512,
                                          granularity="kv", dense_layers=1, predict_interval=int(interval or 1))
                policy = make_policy(sparsity, cfg, (predictor, pparams))
                state = policy.init_state(cfg, batch, capacity)
                seconds, cache = time_decode(model, params, cache, policy, state, args.steps)
                read_tokens = context if method == "dense" else min(context, args.budget)
                dense_layer_bytes = batch * kv_row // cfg.num_hidden_layers * context
                sparse_layers = 0 if method == "dense" else cfg.num_hidden_layers - 1
                kv_bytes = dense_layer_bytes * (cfg.num_hidden_layers - sparse_layers) + batch * kv_row // cfg.num_hidden_layers * read_tokens * sparse_layers
                floor = (weights + kv_bytes) / bandwidth
                if method == "tokenbutler":  # importance keys: d' values per KV head, layer and token
                    kv_bytes += batch * cfg.num_hidden_layers * cfg.num_key_value_heads * context * pcfg.dDash * 2
                row = dict(method=label, batch=batch, context=context, budget=args.budget, ms_per_token=1e3 * seconds,
                           floor_ms=1e3 * floor, ratio_to_floor=seconds / floor)
                rows.append(row)
                print(f"{label:16s} B={batch} ctx={context:6d}: {1e3 * seconds:8.2f} ms/token  floor {1e3 * floor:6.2f} ms  ({seconds / floor:.2f}x)", flush=True)
            del cache
    meta = dict(device=jax.devices()[0].device_kind, jax=jax.__version__, date=datetime.datetime.now(datetime.UTC).isoformat(),
                commit=subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or os.environ.get("COMMIT", ""),
                command="python " + " ".join(__import__("sys").argv), bandwidth_TBps=bandwidth / 1e12)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "decode_latency.json"), "w") as handle:
        json.dump(dict(meta=meta, rows=rows), handle, indent=1)


if __name__ == "__main__":
    main()
