"""Timing helpers of the benchmarks: best-of-N wall time, and the device bandwidths that every
floor is computed from: `read_bandwidth` (a read-only stream, the ceiling of decode, which mostly
reads) and `copy_bandwidth` (read + write)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def best_seconds(fn, *args, repeats: int = 3) -> float:
    """Least wall time of `repeats` calls fn(*args), each waited for; compile / warm up before calling."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def _random(nbytes: int) -> jax.Array:
    return jax.random.uniform(jax.random.PRNGKey(0), (nbytes // 4,), jnp.float32)


def copy_bandwidth(nbytes: int = 2 << 30, reps: int = 20) -> float:
    """Bytes/s (read + write counted) of an elementwise pass over `nbytes`, dispatch amortised in a fori_loop."""
    x = _random(nbytes)

    @jax.jit
    def loop(x):
        return jax.lax.fori_loop(0, reps, lambda i, y: y * 1.0000001 + 1e-9, x)

    loop(x).block_until_ready()
    seconds = best_seconds(loop, x, repeats=2)
    del x
    return 2 * nbytes * reps / seconds


def read_bandwidth(nbytes: int = 2 << 30, reps: int = 20) -> float:
    """Bytes/s of a read-only stream: a full sum over `nbytes` (f32), `reps` times in a fori_loop.

    Each rep scales by a loop-dependent factor, so the reduction is not hoisted; it writes only a
    scalar. The floor of a kernel that reads B bytes is B / read_bandwidth().
    """
    x = _random(nbytes).reshape(-1, 4096)

    @jax.jit
    def loop(x):
        def body(i, acc):
            return acc + jnp.sum(x * (1.0 + i.astype(jnp.float32) * 1e-7))
        return jax.lax.fori_loop(0, reps, body, jnp.float32(0))

    loop(x).block_until_ready()
    seconds = best_seconds(loop, x, repeats=2)
    del x
    return nbytes * reps / seconds


def add_decode_shape_args(parser) -> None:
    """The decode shape every decode benchmark takes: budget, sinks, window, predictor d' and I."""
    parser.add_argument("--budget", type=int, default=8192, help="tokens attended per KV head on sparse layers")
    parser.add_argument("--n-sink", type=int, default=128, help="first tokens always kept (inside the budget)")
    parser.add_argument("--n-window", type=int, default=512, help="recent tokens always kept (inside the budget)")
    parser.add_argument("--d-dash", type=int, default=16, help="TokenButler importance-key width d'")
    parser.add_argument("--intdim", type=int, default=512, help="TokenButler producer hidden size I")
