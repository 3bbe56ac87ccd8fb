"""Shared machinery of the eviction policies (H2O, SnapKV): a per-(layer, selection head) alive
mask over the cache slots, attention restricted to it, and the eviction rule.

Everything reuses the one attention implementation (`attention_logits` / `masked_attention` /
`softmax_probs` of butler_jax.attention), the shared top-n selection of select.py and the one
chunked simulation loop of simulate.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp

from butler_jax.attention import attention_logits, causal_mask, masked_attention, softmax_probs
from butler_jax.config import ModelConfig
from butler_jax.sparsity.select import group_sum, top_n_mask

if TYPE_CHECKING:
    from butler_jax.sparsity import SparsityConfig


class EvictionState(NamedTuple):
    """alive: bool [L, B, Hsel, C] (False = evicted for good, or not written yet);
    score: float32 [L, B, Hsel, C] (H2O: accumulated attention; SnapKV: unused zeros)."""

    alive: jnp.ndarray
    score: jnp.ndarray


def num_selection_heads(cfg: ModelConfig, granularity: str) -> int:
    return cfg.num_key_value_heads if granularity == "kv" else cfg.num_attention_heads


def init_eviction_state(cfg: ModelConfig, granularity: str, batch: int, capacity: int) -> EvictionState:
    shape = (cfg.num_hidden_layers, batch, num_selection_heads(cfg, granularity), capacity)
    return EvictionState(jnp.zeros(shape, bool), jnp.zeros(shape, jnp.float32))


def expand_heads(keep: jnp.ndarray, num_q_heads: int) -> jnp.ndarray:
    """[B, Hsel, ...] -> [B, Hq, ...] (each KV head's mask repeated over its GQA group)."""
    return jnp.repeat(keep, num_q_heads // keep.shape[1], axis=1)


def evict(alive: jnp.ndarray, score: jnp.ndarray, query_pos: jnp.ndarray, kept: jnp.ndarray,
          n_sink: jnp.ndarray, n_recent: jnp.ndarray, n_max: int) -> jnp.ndarray:
    """Alive mask after evicting down to `kept` tokens (never adds a token).

    alive/score: [B, H, T]; query_pos, kept, n_sink, n_recent: [B] (n_sink + n_recent <= kept).
    Protected: alive sinks (pos < n_sink)
    and alive recent tokens (pos > query_pos - n_recent); the rest of the budget goes to the
    best-scored other alive tokens (ties to the lower index); everything else is evicted.
    """
    key_pos = jnp.arange(alive.shape[-1])
    q = query_pos[:, None, None]
    visible = key_pos <= q
    forced = alive & visible & ((key_pos < n_sink[:, None, None]) | (key_pos > q - n_recent[:, None, None]))
    candidates = alive & visible & ~forced
    n = jnp.maximum(kept[:, None, None] - forced.sum(-1, keepdims=True), 0)
    ranked = jnp.where(candidates, score.astype(jnp.float32), -jnp.inf)
    return forced | (candidates & top_n_mask(ranked, n, n_max))


def alive_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, alive: jnp.ndarray, kv_layout: str):
    """(output [B, 1, Hq, hd], probabilities [B, Hq, T], logits [B, Hq, 1, T]) of one query row per
    batch row over its alive tokens (alive: [B, Hsel, T])."""
    logits = attention_logits(q, k, kv_layout=kv_layout)
    keep = expand_heads(alive, q.shape[2])[:, :, None, :]
    return masked_attention(logits, keep, v, kv_layout=kv_layout), softmax_probs(logits, keep)[:, :, 0], logits


def prompt_column_sums(x, lengths: jnp.ndarray, chunk: int) -> jnp.ndarray:
    """Column sums [B, Hq, P] of the causal softmax of the prompt's real rows.

    The rows go `chunk` at a time through a `lax.scan` (rows padded to a multiple of `chunk` with
    masked-out positions), so memory holds one [B, Hq, chunk, P] block, whatever the prompt length."""
    b, t, hq, _ = x.q.shape
    n = -(-t // chunk)
    q = jnp.pad(x.q, ((0, 0), (0, n * chunk - t), (0, 0), (0, 0)))
    q_positions = jnp.pad(x.positions, ((0, 0), (0, n * chunk - t)), constant_values=jnp.iinfo(jnp.int32).max)

    def add_rows(total, i):
        rows = jax.lax.dynamic_slice_in_dim(q, i * chunk, chunk, axis=1)
        q_pos = jax.lax.dynamic_slice_in_dim(q_positions, i * chunk, chunk, axis=1)
        keep = causal_mask(q_pos, x.positions, lengths) & (q_pos < lengths[:, None])[:, None, :, None]
        return total + softmax_probs(attention_logits(rows, x.k), keep).sum(axis=2), None

    total = jnp.zeros((b, hq, x.k.shape[1]), jnp.float32)
    return jax.lax.scan(add_rows, total, jnp.arange(n))[0]


@dataclass(frozen=True)
class EvictionPolicy:
    """Common part of H2O and SnapKV: settings, state, dense first layers, the GQA group merge
    (per-KV-head selection sums the group's attention probabilities)."""

    cfg: ModelConfig
    settings: "SparsityConfig"

    @classmethod
    def build(cls, sparsity, cfg, predictor=None):
        return cls(cfg, sparsity), ()

    @property
    def num_selection_heads(self) -> int:
        return num_selection_heads(self.cfg, self.settings.granularity)

    def group_sum(self, p: jnp.ndarray) -> jnp.ndarray:
        return group_sum(p, self.cfg.num_key_value_heads, self.settings.granularity)

    def init_state(self, params, batch: int, capacity: int) -> EvictionState:
        return init_eviction_state(self.cfg, self.settings.granularity, batch, capacity)

    def init_simulation(self, params, batch: int, length: int):
        return ()

    def is_dense(self, layer: int) -> bool:
        return layer < self.settings.dense_layers
