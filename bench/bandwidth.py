"""Device copy bandwidth, the denominator of every "fraction of bandwidth" the benchmarks report."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def copy_bandwidth(nbytes: int = 2 << 30, reps: int = 20) -> float:
    """Bytes/s (read + write counted) of an elementwise pass over `nbytes`, dispatch amortised in a fori_loop."""
    x = jnp.ones((nbytes // 4,), jnp.float32)

    @jax.jit
    def loop(x):
        return jax.lax.fori_loop(0, reps, lambda i, y: y * 1.0000001 + 1e-9, x)

    loop(x).block_until_ready()
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        loop(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    del x
    return 2 * nbytes * reps / best
