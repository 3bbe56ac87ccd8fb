"""Base of the score-ranked policies (Oracle, TokenButler, Quest, StreamingLLM).

A subclass only says how it scores tokens: `decode_scores` for one step over the cache, and
`simulated_scores` for a chunk of query rows in decode-simulated prefill. Selection (budget,
sinks, recent window, GQA granularity, dense first layers), attention and statistics are shared;
the selection happens in `select` and the attention in `attend`, one call each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp

from butler_jax.cache import KVCache
from butler_jax.config import ModelConfig
from butler_jax.decode_attention import sparse_attend
from butler_jax.models.llama import LayerInputs
from butler_jax.sharding import attention as sharded_attention
from butler_jax.sharding import select as sharded_selection
from butler_jax.sparsity.base import dense_layer
from butler_jax.sparsity.select import decode_select, group_reduce, simulated_keep
from butler_jax.sparsity.simulate import chunked_simulation
from butler_jax.sparsity.stats import LayerStats, keys_read

if TYPE_CHECKING:
    from butler_jax.sparsity import SparsityConfig


@dataclass(frozen=True)
class ScoredPolicy:
    """Top-K by a per-token score. Subclasses are registered and implement the two score methods."""

    cfg: ModelConfig
    settings: "SparsityConfig"
    shard: Any = field(default=None, kw_only=True)  # sharding.local.Shard in a sharded decode (sharding/decode.py)

    @classmethod
    def build(cls, sparsity, cfg, predictor=None):
        return cls(cfg, sparsity), ()

    # --- scoring: subclasses -------------------------------------------------------------------
    def decode_scores(self, params, layer: int, x: LayerInputs, cache: KVCache, state: Any) -> tuple[jnp.ndarray, Any]:
        """Scores [B, Hsel, T] of every cache slot for the step's query."""
        raise NotImplementedError

    def simulated_scores(self, params, layer: int, x: LayerInputs, rows: slice, logits: jnp.ndarray, carry: Any) -> jnp.ndarray:
        """Scores [B, Hsel, Tq, T] for query rows `rows` (logits: their true logits [B, Hq, Tq, T])."""
        raise NotImplementedError

    def observe_simulation(self, params, layer: int, x: LayerInputs, carry: Any) -> Any:
        """Hook run at every layer of a simulated pass before selection; default: nothing."""
        return carry

    def observe_decode(self, params, layer: int, x: LayerInputs, cache: KVCache, state: Any) -> Any:
        """Hook run at every layer of a decode step before selection; default: nothing."""
        return state

    @property
    def n_recent(self) -> int:
        """Most recent tokens always kept (inside the budget)."""
        return self.settings.n_window

    # --- shared machinery ----------------------------------------------------------------------
    def init_state(self, params, batch: int, capacity: int) -> Any:
        return ()

    def observe_prefill(self, params, layer: int, x: LayerInputs, cache: KVCache, lengths: jnp.ndarray, state: Any) -> Any:
        return state

    def k_max(self, capacity: int) -> int:
        """Slots of a step's index list: the budget's largest kept count (forced tokens inside it);
        `capacity` is the buffer's (a device's part of it in a sharded decode)."""
        if self.shard is not None:
            capacity = self.shard.global_capacity(capacity)
        return self.settings.token_budget.max_kept(capacity)

    def positions(self, capacity: int) -> jnp.ndarray:
        """Global positions [capacity] of the buffer slots (this device's range in a sharded decode)."""
        return jnp.arange(capacity) if self.shard is None else self.shard.positions(capacity)

    def select_top(self, scores: jnp.ndarray, query_pos: jnp.ndarray, capacity: int, n_recent: int):
        """`decode_select` of scores [B, Hsel, capacity] (`sharding.select.sharded_select` when sharded)."""
        s = self.settings
        if self.shard is None:
            return decode_select(scores, query_pos, s.token_budget, self.k_max(capacity), s.n_sink, n_recent,
                                 s.implementation)
        return sharded_selection.sharded_select(scores, query_pos, s.token_budget, self.k_max(capacity), s.n_sink,
                                                n_recent, self.shard, s.implementation)

    def reduce_heads(self, scores: jnp.ndarray) -> jnp.ndarray:
        """Per-KV-head selection: the max of the group's scores (a token any head ranks high)."""
        return group_reduce(scores, self.cfg.num_key_value_heads, self.settings.granularity)

    def select(self, params, layer: int, x: LayerInputs, cache: KVCache, state: Any):
        """(indices, valid [B, Hsel, K], state) for the step's query."""
        scores, state = self.decode_scores(params, layer, x, cache, state)
        indices, valid = self.select_top(scores, cache.lengths, cache.capacity, self.n_recent)
        return indices, valid, state

    def attend(self, params, layer: int, x: LayerInputs, cache: KVCache,
               state: Any) -> tuple[jnp.ndarray, Any, jnp.ndarray]:
        """Dense below `dense_layers`, else attention over the selection; keys read = its valid
        entries (summed over a sharded decode's devices)."""
        state = self.observe_decode(params, layer, x, cache, state)
        impl = self.settings.implementation
        if layer < self.settings.dense_layers:
            out, kept = dense_layer(layer, x, cache, impl, self.shard)
            return out, state, kept
        indices, valid, state = self.select(params, layer, x, cache, state)
        if self.shard is not None:
            out = sharded_attention.sparse_attend(x.q, cache.k[layer], cache.v[layer], indices, valid, self.shard, impl)
            return out, state, self.shard.pooled_keys(keys_read(valid))
        return sparse_attend(x.q, cache.k[layer], cache.v[layer], indices, valid, impl), state, keys_read(valid)

    def init_simulation(self, params, batch: int, length: int) -> Any:
        return ()

    def widen_keep(self, keep: jnp.ndarray, q_pos: jnp.ndarray, n_keys: int) -> jnp.ndarray:
        """Hook on a simulated selection keep [B, Hsel, Tq, Tk] (q_pos [B, Tq]); identity here."""
        return keep

    def row_keep(self, params, layer: int, x: LayerInputs, rows: slice, logits: jnp.ndarray, carry: Any) -> jnp.ndarray:
        """Simulated keep-mask [B, Hsel, Tq, T] of query rows `rows` (logits: theirs [B, Hq, Tq, T])."""
        s, q_pos = self.settings, x.positions[:, rows]
        scores = self.simulated_scores(params, layer, x, rows, logits, carry)
        keep = simulated_keep(scores, q_pos, s.token_budget, s.n_sink, self.n_recent)
        return self.widen_keep(keep, q_pos, x.k.shape[1])

    def simulate_layer(self, params, layer: int, x: LayerInputs, carry: Any) -> tuple[jnp.ndarray, Any, LayerStats]:
        """Decode-simulated attention of all rows of x (each row selects among its causal past)."""
        carry = self.observe_simulation(params, layer, x, carry)
        keep_fn = None if layer < self.settings.dense_layers else (
            lambda rows, logits: self.row_keep(params, layer, x, rows, logits, carry))
        out, stats = chunked_simulation(self.settings, x, keep_fn)
        return out, carry, stats
