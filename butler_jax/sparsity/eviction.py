"""Shared machinery of the eviction policies (H2O, SnapKV): a per-(layer, selection head) alive
mask over the cache slots, attention restricted to it, and the eviction rule.

Everything reuses the one attention implementation (`attention_logits` / `masked_attention` /
`softmax_probs` of butler_jax.attention) and the shared top-n selection of select.py.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from butler_jax.attention import attention_logits, causal_mask, masked_attention, softmax_probs
from butler_jax.config import ModelConfig
from butler_jax.sparsity.select import group_reduce, simulated_keep, top_n_mask
from butler_jax.sparsity.stats import LayerStats, layer_stats


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


def group_sum(p: jnp.ndarray, num_kv_heads: int, granularity: str) -> jnp.ndarray:
    """Per-query-head values [B, Hq, ...] -> [B, Hsel, ...]: as is ("query") or summed over each GQA group ("kv")."""
    if granularity == "query":
        return p
    b, hq = p.shape[:2]
    return p.reshape(b, num_kv_heads, hq // num_kv_heads, *p.shape[2:]).sum(axis=2)


def evict(alive: jnp.ndarray, score: jnp.ndarray, query_pos: jnp.ndarray, kept: jnp.ndarray,
          n_sink: int, n_recent: jnp.ndarray, n_max: int) -> jnp.ndarray:
    """Alive mask after evicting down to `kept` tokens (never adds a token).

    alive/score: [B, H, T]; query_pos, kept, n_recent: [B]. Protected: alive sinks (pos < n_sink)
    and alive recent tokens (pos > query_pos - n_recent); the rest of the budget goes to the
    best-scored other alive tokens (ties to the lower index); everything else is evicted.
    """
    key_pos = jnp.arange(alive.shape[-1])
    q = query_pos[:, None, None]
    visible = key_pos <= q
    forced = alive & visible & ((key_pos < n_sink) | (key_pos > q - n_recent[:, None, None]))
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
    """Column sums [B, Hq, P] of the causal softmax of the prompt's real rows (rows chunked)."""
    total = jnp.zeros((x.q.shape[0], x.q.shape[2], x.k.shape[1]), jnp.float32)
    for start in range(0, x.q.shape[1], chunk):
        rows = slice(start, min(x.q.shape[1], start + chunk))
        q_pos = x.positions[:, rows]
        keep = causal_mask(q_pos, x.positions, lengths) & (q_pos < lengths[:, None])[:, None, :, None]
        total = total + softmax_probs(attention_logits(x.q[:, rows], x.k), keep).sum(axis=2)
    return total


def chunked_simulation(policy, layer: int, x, keep_fn) -> tuple[jnp.ndarray, LayerStats]:
    """Chunked decode-simulated attention; keep_fn(rows, logits) -> keep [B, Hsel, Tq, T] or None (dense)."""
    t, s = x.q.shape[1], policy.settings
    outs, stats = [], LayerStats.zeros()
    for start in range(0, t, s.sim_chunk):
        rows = slice(start, min(t, start + s.sim_chunk))
        q_pos = x.positions[:, rows]
        logits = attention_logits(x.q[:, rows], x.k)
        causal = causal_mask(q_pos, x.positions)
        oracle = simulated_keep(policy.reduce_heads(logits), q_pos, s.budget, s.n_sink, s.n_window)
        keep = keep_fn(rows, logits)
        if keep is None:
            keep = jnp.ones_like(oracle)
        stats = stats + layer_stats(keep, oracle, causal)
        outs.append(masked_attention(logits, expand_heads(keep, x.q.shape[2]) & causal, x.v))
    return jnp.concatenate(outs, axis=1), stats


class EvictionPolicy:
    """Common part of H2O and SnapKV: state, dense first layers, head reduction."""

    name = "eviction"

    def __init__(self, settings, cfg: ModelConfig):
        self.settings, self.cfg = settings, cfg

    @property
    def num_selection_heads(self) -> int:
        return num_selection_heads(self.cfg, self.settings.granularity)

    def reduce_heads(self, scores: jnp.ndarray) -> jnp.ndarray:
        """Oracle reduction (max over the GQA group), as the score-ranked policies use for statistics."""
        return group_reduce(scores, self.cfg.num_key_value_heads, self.settings.granularity)

    def group_sum(self, p: jnp.ndarray) -> jnp.ndarray:
        return group_sum(p, self.cfg.num_key_value_heads, self.settings.granularity)

    def init_state(self, cfg: ModelConfig, batch: int, capacity: int) -> EvictionState:
        return init_eviction_state(cfg, self.settings.granularity, batch, capacity)

    def init_simulation(self, batch: int, length: int):
        return ()

    def is_dense(self, layer: int) -> bool:
        return layer < self.settings.dense_layers
