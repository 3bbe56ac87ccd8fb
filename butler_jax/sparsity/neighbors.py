"""Neighbour fetching (TokenButler long-context release): widen a prediction's token selection.

The spec's algorithm (reference §2.9), per (batch, layer, head) on the sorted selected indices I
(n of them), all in the selectable range [S, E):

1. Runs: split I into maximal runs of consecutive integers; c_k = length of I_k's run.
2. Neighbours: N_k = min(I_k + c_k, E - 1): every run a..a+c-1 is doubled to the right
   (a+c..a+2c-1), an isolated token t gains t+1.
3. Union I + N (2n entries), duplicates removed.
4. Fixed size 2K: truncate, or pad (only when n < K).
5. The slots freed by duplicates are filled with last + 1, last + 2, ... (last = the largest
   index of the union), clamped to E - 1.

Both functions here return the *set* the original ends up attending, not its buffer layout:

* The fill of step 5 is kept: it adds real tokens (the ones right after the last neighbour), as
  many as the union has duplicates, i.e. the selection grows to 2n tokens where they exist.
* Fill values clamped to E - 1 duplicate token E - 1 in the original (its quirk: that token is
  counted twice in the softmax). Here duplicates are dropped, every valid token appears once.
* Step 4's padding only happens when n < K, which means every selectable token was already
  selected (n = min(K, E - S)); then the union is [S, E) and padding/filling add nothing new.
  So the fill target 2n used here gives the same set as the original's 2K.

`expand_neighbors` works on index lists (decode steps), `expand_neighbor_mask` on boolean masks
(decode-simulated prefill, every query row being a prediction step); both give the same set.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_BIG = jnp.iinfo(jnp.int32).max  # sorts after every real index


def _shift_right(x: jnp.ndarray, fill) -> jnp.ndarray:
    """x[..., t - 1] at t (fill at t = 0)."""
    pad = jnp.full(x.shape[:-1] + (1,), fill, x.dtype)
    return jnp.concatenate([pad, x[..., :-1]], axis=-1)


def expand_neighbors(indices: jnp.ndarray, valid: jnp.ndarray, length: jnp.ndarray,
                     out_size: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Neighbour-fetch expansion of index lists.

    indices, valid: [..., n] int32 / bool, the selected tokens I of each row (any order; the
        valid entries must be distinct and lie in [0, length)). `kernels.topk_select` output
        (ascending valid indices first, invalid slots after) qualifies.
    length: int array broadcastable to [...], E: the end of the selectable range; neighbours
        are clamped to E - 1 (on a decode step: the first token of the always-kept window).
    out_size: static number of output slots (the original's 2K). Needs out_size >= 2n to never
        truncate; a smaller one keeps the out_size lowest tokens (the spec's truncation).

    Returns (indices, valid) [..., out_size]: ascending distinct valid indices first (I, its
    neighbours and the fill of step 5, at most 2 * count(valid) tokens, all < E), then invalid
    slots with index 0. Static shapes; three sorts of <= 2n entries per row, no token loops.
    """
    n = indices.shape[-1]
    end = jnp.asarray(length, jnp.int32)[..., None]  # [..., 1]
    v = jnp.sort(jnp.where(valid, indices.astype(jnp.int32), _BIG), axis=-1)
    ok = v != _BIG
    n_valid = ok.sum(-1, keepdims=True, dtype=jnp.int32)

    # 1. runs: a run starts at slot 0, after a gap, or at the first invalid slot
    pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), v.shape)
    start = (pos == 0) | (v - _shift_right(v, 0) != 1) | ~ok
    run_start = jax.lax.cummax(jnp.where(start, pos, 0), axis=v.ndim - 1)
    next_start = jnp.concatenate([jnp.where(start, pos, n)[..., 1:], jnp.full(v.shape[:-1] + (1,), n, jnp.int32)], -1)
    run_end = jax.lax.cummin(next_start, axis=v.ndim - 1, reverse=True)  # first slot after the run
    run_len = run_end - run_start

    # 2. neighbours, clamped to E - 1
    nbr = jnp.where(ok, jnp.minimum(v + run_len, end - 1), _BIG)

    # 3. union, deduplicated, valid entries first
    w = jnp.sort(jnp.concatenate([v, nbr], axis=-1), axis=-1)
    unique = (w != _BIG) & (w != _shift_right(w, -1))
    w = jnp.sort(jnp.where(unique, w, _BIG), axis=-1)
    n_unique = unique.sum(-1, keepdims=True, dtype=jnp.int32)

    # 5. the slots freed by duplicates take last + 1, last + 2, ..., kept while <= E - 1
    slot = jnp.broadcast_to(jnp.arange(2 * n, dtype=jnp.int32), w.shape)
    last = jnp.max(jnp.where(w != _BIG, w, -1), axis=-1, keepdims=True)
    fill = last + slot - n_unique + 1
    fill_ok = (slot >= n_unique) & (slot < 2 * n_valid) & (fill <= end - 1)
    in_union = slot < n_unique
    out = jnp.where(in_union, w, jnp.where(fill_ok, fill, 0))
    out_ok = in_union | fill_ok

    # 4. fixed size: truncate or pad with invalid slots
    if out_size <= 2 * n:
        return out[..., :out_size], out_ok[..., :out_size]
    pad = [(0, 0)] * (out.ndim - 1) + [(0, out_size - 2 * n)]
    return jnp.pad(out, pad), jnp.pad(out_ok, pad)


def expand_neighbor_mask(mask: jnp.ndarray, length: jnp.ndarray) -> jnp.ndarray:
    """The same expansion on a selection mask [..., T] (True = token selected), no truncation.

    length: int array broadcastable to [...], E (tokens >= E in `mask` are ignored). A run
    [a, e) (e = first unselected token after it) covers [e, min(e + (e - a), E)); a token t is a
    neighbour iff max over run ends e <= t of (2e - a) exceeds t, so two cumulative maxima
    replace the per-run loop. Returns the expanded mask [..., T] (I, neighbours and fill).
    """
    t_len = mask.shape[-1]
    end = jnp.asarray(length, jnp.int32)[..., None]
    t = jnp.arange(t_len, dtype=jnp.int32)
    sel = mask & (t < end)
    prev = _shift_right(sel, False)
    axis = sel.ndim - 1
    run_start = jax.lax.cummax(jnp.where(sel & ~prev, t, -1), axis=axis)  # start of the run holding t
    run_end = ~sel & prev  # t is the first token after a run
    reach = jax.lax.cummax(jnp.where(run_end, 2 * t - _shift_right(run_start, -1), -1), axis=axis)
    union = sel | ((reach > t) & (t < end))
    n_fill = 2 * sel.sum(-1, keepdims=True, dtype=jnp.int32) - union.sum(-1, keepdims=True, dtype=jnp.int32)
    last = jnp.max(jnp.where(union, t, -1), axis=-1, keepdims=True)
    return union | ((t > last) & (t <= last + n_fill) & (t < end))
