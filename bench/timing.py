"""Timing helpers of the benchmarks: best-of-N wall time, and the device copy bandwidth that every
"fraction of bandwidth" is relative to."""

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


def copy_bandwidth(nbytes: int = 2 << 30, reps: int = 20) -> float:
    """Bytes/s (read + write counted) of an elementwise pass over `nbytes`, dispatch amortised in a fori_loop."""
    x = jnp.ones((nbytes // 4,), jnp.float32)

    @jax.jit
    def loop(x):
        return jax.lax.fori_loop(0, reps, lambda i, y: y * 1.0000001 + 1e-9, x)

    loop(x).block_until_ready()
    seconds = best_seconds(loop, x, repeats=2)
    del x
    return 2 * nbytes * reps / seconds
