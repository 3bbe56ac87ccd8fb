"""H2O (Heavy-Hitter Oracle, Zhang et al. 2023) as its paper defines it: accumulated attention.

Per (layer, selection head) an alive set over the cache. A token's score is the sum of the
softmax probabilities it received from every query so far (over the alive set; for per-KV-head
selection summed over the GQA group's query heads). The budget K = budget.kept(visible) holds
everything: the sinks (at most K - 1), the recent tokens (the current one at least, n_window
when they fit) and the heavy hitters (heavy_fraction of what is left after the sinks); eviction
is permanent.

Decode step at position p: token p joins -> evict down to K (protected: sinks + recent) ->
attend over the alive set -> add this row's probabilities to the scores. Prefill end: scores =
column sums of the prompt's causal softmax, then evict down to K(prompt length). Simulation runs
the decode step row by row (a lax.scan within the layer, O(T) memory per row); the paper code's
current-logit importance ("h2o_true") is not implemented.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from butler_jax.attention import causal_mask
from butler_jax.sparsity.base import dense_layer, register
from butler_jax.sparsity.eviction import EvictionPolicy, EvictionState, alive_attention, evict, prompt_column_sums
from butler_jax.sparsity.simulate import chunked_simulation, oracle_keep
from butler_jax.sparsity.stats import LayerStats, keys_read, layer_stats


@register("h2o")
class H2OPolicy(EvictionPolicy):
    """`sparsity.heavy_fraction`: the heavy hitters' share of the budget after the sinks."""

    def split(self, visible: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        """(K, sinks, recent) for rows seeing `visible` tokens, sinks + recent <= K: K = budget.kept(visible);
        sinks = min(n_sink, visible, K - 1); of the rest R = K - sinks, heavy = floor(heavy_fraction x R)
        (at most R - 1) and recent = R - heavy, raised to n_window where it fits in R."""
        s = self.settings
        kept = jnp.maximum(s.token_budget.kept(visible), 1)
        sinks = jnp.minimum(jnp.minimum(s.n_sink, visible), kept - 1)
        rest = kept - sinks
        heavy = jnp.minimum(jnp.floor(rest * s.heavy_fraction).astype(jnp.int32), rest - 1)
        recent = jnp.minimum(jnp.maximum(rest - heavy, s.n_window), rest)
        return kept, sinks, recent

    def evict_to_budget(self, alive, score, pos):
        kept, sinks, recent = self.split(pos + 1)
        n_max = self.settings.token_budget.max_kept(alive.shape[-1])
        return evict(alive, score, pos, kept, sinks, recent, n_max)

    def step(self, q, k, v, alive, score, pos, kv_layout):
        """One query row per batch row at position pos [B]: join, evict, attend, accumulate."""
        alive = alive | (jnp.arange(alive.shape[-1]) == pos[:, None, None])
        alive = self.evict_to_budget(alive, score, pos)
        out, probs, logits = alive_attention(q, k, v, alive, kv_layout)
        return out, alive, score + self.group_sum(probs), logits

    # --- generation ----------------------------------------------------------------------------
    def observe_prefill(self, params, layer, x, cache, lengths, state: EvictionState) -> EvictionState:
        if self.is_dense(layer):
            return state
        capacity = cache.capacity
        scores = self.group_sum(prompt_column_sums(x, lengths, self.settings.sim_chunk))
        p = scores.shape[-1]
        score = jnp.zeros(state.score.shape[1:], jnp.float32).at[..., :p].set(scores)
        alive = jnp.broadcast_to(jnp.arange(capacity) < lengths[:, None, None], score.shape)
        alive = self.evict_to_budget(alive, score, lengths - 1)
        return EvictionState(state.alive.at[layer].set(alive), state.score.at[layer].set(score))

    def attend(self, params, layer, x, cache, state: EvictionState):
        if self.is_dense(layer):
            out, kept = dense_layer(layer, x, cache, self.settings.implementation)
            return out, state, kept
        out, alive, score, _ = self.step(x.q, cache.k[layer], cache.v[layer], state.alive[layer], state.score[layer],
                                         cache.lengths, "bhtd")
        return out, EvictionState(state.alive.at[layer].set(alive), state.score.at[layer].set(score)), keys_read(alive)

    # --- decode-simulated prefill --------------------------------------------------------------
    def simulate_layer(self, params, layer, x, carry):
        if self.is_dense(layer):
            out, stats = chunked_simulation(self.settings, x, None)
            return out, carry, stats
        b, t = x.q.shape[:2]
        shape = (b, self.num_selection_heads, t)

        def row(c, i):
            alive, score = c
            q = jax.lax.dynamic_slice_in_dim(x.q, i, 1, axis=1)
            pos = x.positions[:, i]
            out, alive, score, logits = self.step(q, x.k, x.v, alive, score, pos, "bthd")
            q_pos = pos[:, None]
            oracle = oracle_keep(logits, q_pos, x.positions, self.cfg.num_key_value_heads, self.settings)
            stats = layer_stats(alive[:, :, None], oracle, causal_mask(q_pos, x.positions))  # fields [B, 1]
            return (alive, score), (out[:, 0], stats)

        init = (jnp.zeros(shape, bool), jnp.zeros(shape, jnp.float32))
        _, (outs, stats) = jax.lax.scan(row, init, jnp.arange(t))  # stats fields [T, B, 1]
        return jnp.moveaxis(outs, 0, 1), carry, LayerStats(*(field[..., 0].T for field in stats))
