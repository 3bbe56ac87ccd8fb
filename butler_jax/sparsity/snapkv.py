"""SnapKV (Li et al. 2024) as its paper defines it: one compression of the prompt at prefill end.

Per (layer, selection head), for a prompt of P tokens: votes = the softmax attention of the last
w = `observation_window` prompt rows (P-w .. P-1) over the prefix (keys before them), summed over
those rows (and over the GQA group's query heads for per-KV-head selection), max-pooled along
keys (kernel `pool_kernel`, stride 1, same padding). Kept: the sinks + the window's tokens
(forced) + the best-voted prefix tokens, K(P + 1) - 1 in total (K = budget.kept), so that with
the first generated token the step attends exactly K(P + 1) tokens, as every other method does
at that position; the rest is evicted for good. Every generated token is kept (SnapKV
compresses the prompt once).

Simulation treats row i as the first generated token after a prompt of i tokens: votes from rows
i-w .. i-1 (the window ends at the previous row, so row i's own query never chooses its tokens),
pooled over keys < i-w; kept: sinks + tokens i-w .. i (the window and the current token) + the
best-voted prefix tokens, K(i + 1) in total. The sliding sum over rows is a cumulative sum,
chunked over rows (memory O((chunk + window) x T)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from butler_jax.attention import attention_logits, causal_mask, softmax_probs
from butler_jax.sparsity.base import dense_layer, register
from butler_jax.sparsity.eviction import EvictionPolicy, EvictionState, alive_attention
from butler_jax.sparsity.select import simulated_keep
from butler_jax.sparsity.simulate import chunked_simulation
from butler_jax.sparsity.stats import keys_read


@register("snapkv")
class SnapKVPolicy(EvictionPolicy):
    """`sparsity.observation_window` (w) and `sparsity.pool_kernel`."""

    @property
    def window(self) -> int:
        return self.settings.observation_window

    def pool(self, votes: jnp.ndarray, first_window: jnp.ndarray) -> jnp.ndarray:
        """votes [B, H, Tq, T] -> max-pooled over the prefix keys (key < first_window [B, Tq])."""
        prefix = jnp.arange(votes.shape[-1]) < first_window[:, None, :, None]
        votes = jnp.where(prefix, votes, 0.0)  # probabilities >= 0: zero padding == -inf padding
        k = self.settings.pool_kernel
        pooled = jax.lax.reduce_window(votes, -jnp.inf, jax.lax.max, (1, 1, 1, k), (1, 1, 1, 1),
                                       ((0, 0), (0, 0), (0, 0), ((k - 1) // 2, k // 2)))
        return jnp.where(prefix, pooled, 0.0)

    def keep_mask(self, votes: jnp.ndarray, last: jnp.ndarray, n_forced: int, kept: jnp.ndarray) -> jnp.ndarray:
        """Kept keys [B, H, Tq, T] among keys <= last [B, Tq]: sinks, the n_forced newest tokens
        (at least n_window of them) and the best-pooled prefix tokens, `kept` [B, Tq] in total."""
        s = self.settings
        recent = max(n_forced, s.n_window)
        return simulated_keep(self.pool(votes, last - n_forced + 1), last, s.token_budget, s.n_sink, recent, kept)

    def row_keep(self, params, layer: int, x, rows: slice, logits: jnp.ndarray, carry=None) -> jnp.ndarray:
        """Simulated keep-mask [B, Hsel, Tq, T] of query rows `rows` (logits: theirs [B, Hq, Tq, T]);
        row i reads the probabilities of rows i-w .. i-1 only."""
        w = self.window
        lo = max(rows.start - w, 0)
        extra = rows.start - lo
        q_pos = x.positions[:, rows]
        probs = self.group_sum(softmax_probs(logits, causal_mask(q_pos, x.positions)))
        if extra:
            before_pos = x.positions[:, lo:rows.start]
            before = softmax_probs(attention_logits(x.q[:, lo:rows.start], x.k), causal_mask(before_pos, x.positions))
            probs = jnp.concatenate([self.group_sum(before), probs], axis=2)
        csum = jnp.cumsum(probs, axis=2)  # C[j] = sum of rows lo..j (local index j - lo)

        def at(local):  # C at local row indices [n] (0 before the first row)
            return jnp.where((local >= 0)[None, None, :, None], jnp.take(csum, jnp.clip(local, 0, None), axis=2), 0.0)

        local = jnp.arange(rows.stop - rows.start) + extra  # row i's local index
        votes = at(local - 1) - at(local - 1 - w)  # rows i-w .. i-1
        return self.keep_mask(votes, q_pos, w + 1, self.settings.token_budget.kept(q_pos + 1))

    # --- generation ----------------------------------------------------------------------------
    def observe_prefill(self, params, layer, x, cache, lengths, state: EvictionState) -> EvictionState:
        if self.is_dense(layer):
            return state
        p = x.q.shape[1]
        w = min(self.window, p)
        # the last w real prompt rows of each batch row (rows before 0 are masked out)
        rows = lengths[:, None] - w + jnp.arange(w)[None, :]
        q = jnp.take_along_axis(x.q, jnp.clip(rows, 0, p - 1)[:, :, None, None], axis=1)
        keep = causal_mask(rows, x.positions, lengths) & (rows >= 0)[:, None, :, None]
        votes = self.group_sum(softmax_probs(attention_logits(q, x.k), keep).sum(axis=2))  # [B, Hsel, P]
        last = (lengths - 1)[:, None]
        kept = self.settings.token_budget.kept(last + 2) - 1  # K(P + 1) - 1: the first step attends K(P + 1)
        keep = self.keep_mask(votes[:, :, None], last, self.window, kept)[:, :, 0]
        alive = jnp.zeros(state.alive.shape[1:], bool).at[..., :p].set(keep)
        return state._replace(alive=state.alive.at[layer].set(alive))

    def attend(self, params, layer, x, cache, state: EvictionState):
        if self.is_dense(layer):
            out, kept = dense_layer(layer, x, cache, self.settings.implementation)
            return out, state, kept
        alive = state.alive[layer] | (jnp.arange(cache.capacity) == cache.lengths[:, None, None])
        out, _, _ = alive_attention(x.q, cache.k[layer], cache.v[layer], alive, "bhtd")
        return out, state._replace(alive=state.alive.at[layer].set(alive)), keys_read(alive)

    # --- decode-simulated prefill --------------------------------------------------------------
    def simulate_layer(self, params, layer, x, carry):
        keep_fn = None if self.is_dense(layer) else (lambda rows, logits: self.row_keep(params, layer, x, rows, logits))
        out, stats = chunked_simulation(self.settings, x, keep_fn)
        return out, carry, stats
