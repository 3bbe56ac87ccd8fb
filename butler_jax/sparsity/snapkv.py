"""SnapKV (Li et al. 2024) as its paper defines it: one compression of the prompt at prefill end.

Per (layer, selection head): votes = the softmax attention of the last `window` prompt rows over
the prefix (keys before the window), summed over those rows (and over the GQA group's query heads
for per-KV-head selection), max-pooled along keys (kernel `pool_kernel`, stride 1, same
padding). Kept: the sinks + the window's tokens (forced) + the best-voted prefix tokens, K =
budget.kept(prompt length) in total (never fewer than the forced ones); the rest is evicted for
good. Every generated token is kept (SnapKV compresses the prompt once).

Simulation replays the prefill compression at every position i: votes from rows i-window+1..i of
the full causal softmax (a sliding sum over rows via a cumulative sum, chunked over rows:
memory O((chunk + window) x T)), pooled over keys < i-window+1, top (K_i - forced) of those.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from butler_jax.attention import attention_logits, causal_mask, softmax_probs
from butler_jax.decode_attention import dense_attend
from butler_jax.sparsity.eviction import EvictionPolicy, EvictionState, alive_attention, chunked_simulation
from butler_jax.sparsity.select import simulated_keep


class SnapKVPolicy(EvictionPolicy):
    name = "snapkv"

    def __init__(self, settings, cfg, window: int = 32, pool_kernel: int = 7):
        if window < 1 or pool_kernel < 1:
            raise ValueError(f"snapkv window={window} and pool_kernel={pool_kernel} must be >= 1")
        super().__init__(settings, cfg)
        self.window, self.pool_kernel = window, pool_kernel

    def pool(self, votes: jnp.ndarray, query_pos: jnp.ndarray) -> jnp.ndarray:
        """votes [B, H, Tq, T] -> max-pooled over keys of the prefix (key < query_pos - window + 1)."""
        prefix = jnp.arange(votes.shape[-1]) < (query_pos - self.window + 1)[:, None, :, None]
        votes = jnp.where(prefix, votes, 0.0)  # probabilities >= 0: zero padding == -inf padding
        k = self.pool_kernel
        pooled = jax.lax.reduce_window(votes, -jnp.inf, jax.lax.max, (1, 1, 1, k), (1, 1, 1, 1),
                                       ((0, 0), (0, 0), (0, 0), ((k - 1) // 2, k // 2)))
        return jnp.where(prefix, pooled, 0.0)

    def keep_mask(self, votes: jnp.ndarray, query_pos: jnp.ndarray) -> jnp.ndarray:
        """Kept keys [B, H, Tq, T] for rows at query_pos [B, Tq] from their summed window votes."""
        s = self.settings
        return simulated_keep(self.pool(votes, query_pos), query_pos, s.budget, s.n_sink, max(self.window, s.n_window))

    # --- generation ----------------------------------------------------------------------------
    def observe_prefill(self, layer, x, cache, lengths, state: EvictionState) -> EvictionState:
        if self.is_dense(layer):
            return state
        p = x.q.shape[1]
        w = min(self.window, p)
        # the last w real prompt rows of each batch row (rows before 0 are masked out)
        rows = lengths[:, None] - w + jnp.arange(w)[None, :]
        q = jnp.take_along_axis(x.q, jnp.clip(rows, 0, p - 1)[:, :, None, None], axis=1)
        keep = causal_mask(rows, x.positions, lengths) & (rows >= 0)[:, None, :, None]
        votes = self.group_sum(softmax_probs(attention_logits(q, x.k), keep).sum(axis=2))  # [B, Hsel, P]
        keep = self.keep_mask(votes[:, :, None], (lengths - 1)[:, None])[:, :, 0]
        alive = jnp.zeros(state.alive.shape[1:], bool).at[..., :p].set(keep)
        return state._replace(alive=state.alive.at[layer].set(alive))

    def attend(self, layer, x, cache, state: EvictionState):
        if self.is_dense(layer):
            return dense_attend(x.q, cache.k[layer], cache.v[layer], cache.lengths + 1, self.settings.implementation), state
        alive = state.alive[layer] | (jnp.arange(cache.capacity) == cache.lengths[:, None, None])
        out, _, _ = alive_attention(x.q, cache.k[layer], cache.v[layer], alive, "bhtd")
        return out, state._replace(alive=state.alive.at[layer].set(alive))

    # --- decode-simulated prefill --------------------------------------------------------------
    def simulate_layer(self, layer, x, carry):
        if self.is_dense(layer):
            out, stats = chunked_simulation(self, layer, x, lambda rows, logits: None)
            return out, carry, stats
        w = self.window

        def keep_fn(rows, logits):
            # probabilities of rows [lo, stop) where lo = start - w (clipped); votes(i) = C[i] - C[i - w]
            lo = max(rows.start - w, 0)
            extra = rows.start - lo
            if extra:
                q_pos = x.positions[:, lo:rows.start]
                before = softmax_probs(attention_logits(x.q[:, lo:rows.start], x.k), causal_mask(q_pos, x.positions))
                before = self.group_sum(before)
            q_pos = x.positions[:, rows]
            probs = self.group_sum(softmax_probs(logits, causal_mask(q_pos, x.positions)))
            full = jnp.concatenate([before, probs], axis=2) if extra else probs
            csum = jnp.cumsum(full, axis=2)
            n = probs.shape[2]
            upto = csum[:, :, extra:]  # C[i] for the chunk rows
            idx = jnp.arange(n) + extra - w  # index of C[i - w] within csum
            shifted = jnp.where((idx >= 0)[None, None, :, None], jnp.take(csum, jnp.clip(idx, 0, None), axis=2), 0.0)
            return self.keep_mask(upto - shifted, q_pos)

        out, stats = chunked_simulation(self, layer, x, keep_fn)
        return out, carry, stats
