"""Base of the score-ranked policies (Oracle, TokenButler, Quest, StreamingLLM).

A subclass only says how it scores tokens: `decode_scores` for one step over the cache, and
`simulated_scores` for a chunk of query rows in decode-simulated prefill. Selection (budget,
sinks, recent window, GQA granularity, dense first layers), attention and statistics are shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import jax.numpy as jnp

from butler_jax.attention import attention_logits, causal_mask, masked_attention
from butler_jax.cache import KVCache
from butler_jax.config import ModelConfig
from butler_jax.decode_attention import dense_attend, sparse_attend
from butler_jax.models.llama import LayerInputs
from butler_jax.sparsity.budget import Budget
from butler_jax.sparsity.select import decode_select, group_reduce, simulated_keep
from butler_jax.sparsity.stats import LayerStats, layer_stats


@dataclass(frozen=True)
class SelectionSettings:
    """How many tokens each head keeps and which ones are always kept.

    budget: kept tokens per head (count or fraction of the visible ones, forced ones included);
    n_sink: first tokens always kept; n_window: most recent tokens always kept;
    granularity: one selection per KV head ("kv", shared by its GQA group) or per query head;
    dense_layers: the first layers attend densely; implementation: kernels "auto"/"pallas"/"xla";
    sim_chunk: query rows per chunk in decode-simulated prefill (memory O(chunk x length)).
    """

    budget: Budget
    n_sink: int = 4
    n_window: int = 0
    granularity: Literal["kv", "query"] = "kv"
    dense_layers: int = 1
    implementation: str = "auto"
    sim_chunk: int = 256


class ScoredPolicy:
    """Top-K by a per-token score. Subclasses set `name` and implement the two score methods."""

    name = "scored"

    def __init__(self, settings: SelectionSettings, cfg: ModelConfig):
        self.settings, self.cfg = settings, cfg

    # --- scoring: subclasses -------------------------------------------------------------------
    def decode_scores(self, layer: int, x: LayerInputs, cache: KVCache, state: Any) -> tuple[jnp.ndarray, Any]:
        """Scores [B, Hsel, T] of every cache slot for the step's query."""
        raise NotImplementedError

    def simulated_scores(self, layer: int, x: LayerInputs, rows: slice, logits: jnp.ndarray, carry: Any) -> jnp.ndarray:
        """Scores [B, Hsel, Tq, T] for query rows `rows` (logits: their true logits [B, Hq, Tq, T])."""
        raise NotImplementedError

    def observe_simulation(self, layer: int, x: LayerInputs, carry: Any) -> Any:
        """Hook run at every layer of a simulated pass before selection; default: nothing."""
        return carry

    def observe_decode(self, layer: int, x: LayerInputs, cache: KVCache, state: Any) -> Any:
        """Hook run at every layer of a decode step before selection; default: nothing."""
        return state

    # --- shared machinery ----------------------------------------------------------------------
    def init_state(self, cfg: ModelConfig, batch: int, capacity: int) -> Any:
        return ()

    def observe_prefill(self, layer: int, x: LayerInputs, cache: KVCache, lengths: jnp.ndarray, state: Any) -> Any:
        return state

    def k_max(self, capacity: int) -> int:
        s = self.settings
        return min(capacity, max(s.budget.max_kept(capacity), s.n_sink + s.n_window))

    def reduce_heads(self, scores: jnp.ndarray) -> jnp.ndarray:
        return group_reduce(scores, self.cfg.num_key_value_heads, self.settings.granularity)

    def select(self, layer: int, x: LayerInputs, cache: KVCache, state: Any):
        """(indices, valid [B, Hsel, K], state) for the step's query."""
        scores, state = self.decode_scores(layer, x, cache, state)
        s = self.settings
        indices, valid = decode_select(scores, cache.lengths, s.budget, self.k_max(cache.capacity), s.n_sink, s.n_window, s.implementation)
        return indices, valid, state

    def attend(self, layer: int, x: LayerInputs, cache: KVCache, state: Any) -> tuple[jnp.ndarray, Any]:
        state = self.observe_decode(layer, x, cache, state)
        if layer < self.settings.dense_layers:
            return dense_attend(x.q, cache.k[layer], cache.v[layer], cache.lengths + 1, self.settings.implementation), state
        indices, valid, state = self.select(layer, x, cache, state)
        out = sparse_attend(x.q, cache.k[layer], cache.v[layer], indices, valid, self.settings.implementation)
        return out, state

    def init_simulation(self, batch: int, length: int) -> Any:
        return ()

    def widen_keep(self, keep: jnp.ndarray, q_pos: jnp.ndarray, n_keys: int) -> jnp.ndarray:
        """Hook on a simulated selection keep [B, Hsel, Tq, Tk] (q_pos [B, Tq]); identity here."""
        return keep

    def simulate_layer(self, layer: int, x: LayerInputs, carry: Any) -> tuple[jnp.ndarray, Any, LayerStats]:
        """Decode-simulated attention of all rows of x (each row selects among its causal past)."""
        carry = self.observe_simulation(layer, x, carry)
        t, s = x.q.shape[1], self.settings
        outs, stats = [], LayerStats.zeros()
        for start in range(0, t, s.sim_chunk):
            rows = slice(start, min(t, start + s.sim_chunk))
            q_pos = x.positions[:, rows]
            logits = attention_logits(x.q[:, rows], x.k)
            causal = causal_mask(q_pos, x.positions)
            oracle = simulated_keep(self.reduce_heads(logits), q_pos, s.budget, s.n_sink, s.n_window)
            if layer < s.dense_layers:
                keep = jnp.ones_like(oracle)
            else:
                keep = simulated_keep(self.simulated_scores(layer, x, rows, logits, carry), q_pos, s.budget, s.n_sink, s.n_window)
                keep = self.widen_keep(keep, q_pos, x.k.shape[1])
            stats = stats + layer_stats(keep, oracle, causal)
            keep_q = jnp.repeat(keep, self.cfg.num_attention_heads // keep.shape[1], axis=1)
            outs.append(masked_attention(logits, keep_q & causal, x.v))
        return jnp.concatenate(outs, axis=1), carry, stats
