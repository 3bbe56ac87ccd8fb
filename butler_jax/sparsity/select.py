"""Top-K token selection shared by the score-based policies, for decode steps and simulation.

The kept set of a row = forced tokens (the first `n_sink` and the last `n_window` visible
tokens) + the best-scored other visible tokens, exactly `budget.kept(visible)` in total, so every
method keeps as many tokens at one budget. A row whose budget cannot hold all its forced tokens
(the first rows at a fractional budget) forces only the current token (with n_window >= 1): its
ranking picks the rest, so the Oracle stays the top-K there (cutting the forced set to the budget
instead filled it with the recent window, dropping the attention sink and overriding the
ranking). Ties go to the lower index in both paths, so a decode step and the decode-simulated
prefill select identical tokens for identical scores.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from butler_jax.attention import softmax_probs
from butler_jax.sparsity.budget import Budget
from butler_jax.kernels.topk_select import topk_select


def group_reduce(scores: jnp.ndarray, num_kv_heads: int, granularity: str) -> jnp.ndarray:
    """Per-query-head scores [B, Hq, ...] -> [B, Hsel, ...]: as is ("query") or max over each GQA group ("kv")."""
    if granularity == "query":
        return scores
    b, hq = scores.shape[:2]
    return scores.reshape(b, num_kv_heads, hq // num_kv_heads, *scores.shape[2:]).max(axis=2)


def group_sum(p: jnp.ndarray, num_kv_heads: int, granularity: str) -> jnp.ndarray:
    """Per-query-head values [B, Hq, ...] -> [B, Hsel, ...]: as is ("query") or summed over each GQA group ("kv")."""
    if granularity == "query":
        return p
    b, hq = p.shape[:2]
    return p.reshape(b, num_kv_heads, hq // num_kv_heads, *p.shape[2:]).sum(axis=2)


def attention_mass(logits: jnp.ndarray, visible: jnp.ndarray, num_kv_heads: int, granularity: str) -> jnp.ndarray:
    """The Oracle's ranking: true attention probabilities over the visible keys, summed over each
    GQA group for per-KV-head selection (the group's attention mass, so a flat head cannot outvote
    a peaked one); per query head this ranks exactly as the logits do.

    logits: [B, Hq, ..., T] f32, visible: bool broadcastable to it -> [B, Hsel, ..., T] (0 where hidden)."""
    return group_sum(softmax_probs(logits, visible), num_kv_heads, granularity)


def forced_counts(visible: jnp.ndarray, kept: jnp.ndarray, n_sink: int, n_window: int
                  ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(sinks, recent) forced in rows that see `visible` tokens and keep `kept` (broadcastable):
    (n_sink, n_window) cut to the visible tokens when all of them fit in the budget, else only the
    current token (0, min(n_window, 1)): Quest's own page and grouped TokenButler rely on it."""
    fits = jnp.minimum(visible, n_sink + n_window) <= kept
    n_win = jnp.where(fits, jnp.minimum(n_window, kept), min(n_window, 1))
    return jnp.where(fits, jnp.clip(kept - n_win, 0, n_sink), 0), n_win


def forced_keys(key_pos: jnp.ndarray, query_pos: jnp.ndarray, n_sink: int, n_window: int,
                kept: jnp.ndarray | None = None) -> jnp.ndarray:
    """Forced (always kept) keys: key_pos < n_sink or key_pos > query_pos - n_window, causal only.

    With `kept` (the row's budget, broadcastable to query_pos) only rows whose budget holds all
    their forced tokens force them, the others only the current token (`forced_counts`). key_pos: [T], query_pos: [...] -> bool [..., T].
    """
    q = query_pos[..., None]
    n_snk, n_win = jnp.asarray(n_sink), jnp.asarray(n_window)
    if kept is not None:
        n_snk, n_win = (n[..., None] for n in forced_counts(query_pos + 1, jnp.asarray(kept), n_sink, n_window))
    return (key_pos <= q) & ((key_pos < n_snk) | (key_pos > q - n_win))


def selects_ascending(budget: Budget, k_max: int, n_sink: int, n_window: int) -> bool:
    """Whether `decode_select` takes the top-K kernel, whose valid indices ascend along each row."""
    return budget.tokens is not None and n_sink + n_window <= k_max


def decode_select(scores: jnp.ndarray, query_pos: jnp.ndarray, budget: Budget, k_max: int,
                  n_sink: int, n_window: int, implementation: str = "auto") -> tuple[jnp.ndarray, jnp.ndarray]:
    """Indices [B, Hs, k_max] and validity for the current token at query_pos [B] from scores [B, Hs, T].

    Exactly budget.kept(query_pos + 1) tokens, the forced ones (`forced_keys` inside the budget)
    included. A fixed token budget that holds every forced token goes to the exact top-K kernel
    (`kernels.topk_select`: Pallas on GPU, its lax.top_k reference elsewhere; indices ascending);
    otherwise lax.top_k here."""
    if selects_ascending(budget, k_max, n_sink, n_window):
        b, hs, t = scores.shape
        lengths = jnp.repeat(query_pos + 1, hs)
        indices, valid = topk_select(scores.reshape(b * hs, t), k_max, lengths, n_sink=n_sink, n_recent=n_window,
                                     implementation=implementation)
        return indices.reshape(b, hs, k_max), valid.reshape(b, hs, k_max)
    key_pos = jnp.arange(scores.shape[-1])
    kept = budget.kept(query_pos + 1)
    forced = forced_keys(key_pos, query_pos, n_sink, n_window, kept)[:, None, :]
    visible = key_pos[None, None, :] <= query_pos[:, None, None]
    finite = jnp.minimum(scores.astype(jnp.float32), jnp.finfo(jnp.float32).max)  # forced tokens outrank +inf scores
    ranked = jnp.where(forced, jnp.inf, jnp.where(visible, finite, -jnp.inf))
    values, indices = jax.lax.top_k(ranked, k_max)
    valid = (jnp.arange(k_max)[None, None, :] < kept[:, None, None]) & (values > -jnp.inf)
    return indices.astype(jnp.int32), valid


def simulated_keep(scores: jnp.ndarray, query_pos: jnp.ndarray, budget: Budget, n_sink: int, n_window: int,
                   kept: jnp.ndarray | None = None) -> jnp.ndarray:
    """Keep-mask [B, Hs, Tq, T] for every query row at query_pos [B, Tq] from scores [B, Hs, Tq, T]:
    exactly `kept` tokens per row (default budget.kept(query_pos + 1)), forced ones included."""
    key_pos = jnp.arange(scores.shape[-1])
    kept = budget.kept(query_pos + 1) if kept is None else kept
    forced = forced_keys(key_pos, query_pos, n_sink, n_window, kept)[:, None]
    visible = (key_pos <= query_pos[..., None])[:, None]
    candidates = visible & ~forced
    ranked = jnp.where(candidates, jnp.minimum(scores.astype(jnp.float32), jnp.finfo(jnp.float32).max), -jnp.inf)
    n_select = jnp.maximum(kept[:, None, :, None] - forced.sum(-1, keepdims=True), 0)
    return forced | (candidates & top_n_mask(ranked, n_select, budget.max_kept(scores.shape[-1])))


def top_n_mask(x: jnp.ndarray, n: jnp.ndarray, n_max: int) -> jnp.ndarray:
    """Mask of the n (per row, <= n_max) largest entries of x [..., T], ties to the lower index.

    The n-th value is read from one top_k(n_max); entries above it are kept, and of the entries
    equal to it only as many as still fit, lowest index first (a cumulative count).
    """
    top = jax.lax.top_k(x, max(1, min(n_max, x.shape[-1])))[0]
    threshold = jnp.take_along_axis(top, jnp.clip(n - 1, 0, top.shape[-1] - 1), axis=-1)
    above = x > threshold
    ties = (x == threshold) & (x > -jnp.inf)
    room = n - above.sum(-1, keepdims=True)
    return (n > 0) & (above | (ties & (jnp.cumsum(ties, axis=-1) <= room)))


def indices_to_mask(indices: jnp.ndarray, valid: jnp.ndarray, length: int) -> jnp.ndarray:
    """Index lists [..., K] + validity -> bool mask [..., length] (a scatter, O(K) per row)."""
    lead, k = indices.shape[:-1], indices.shape[-1]
    rows = jnp.arange(math.prod(lead))[:, None]
    mask = jnp.zeros((rows.shape[0], length), jnp.int8)
    mask = mask.at[rows, indices.reshape(-1, k)].max(valid.reshape(-1, k).astype(jnp.int8))
    return mask.reshape(*lead, length).astype(bool)
