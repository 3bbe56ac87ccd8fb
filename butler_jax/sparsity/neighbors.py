"""Neighbour fetching (TokenButler long-context release): widen a prediction's token selection.

The release's algorithm, per (batch, layer, head) on the sorted selected indices I
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
On a decode step the index form avoids sorts, searches and loops: with three sorts, 8 rows x
8192 tokens took 241 us per layer on an H100 (bench/decode_breakdown.py `nf_expand`). With a
binary search (a `while` loop, its predicate read back to the host at every iteration) plus
cumulative max/min scans it still took 227 us on an H200. Now it is gathers from one tag row
per list plus scatters and two cumulative sums.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_BIG = jnp.iinfo(jnp.int32).max  # sorts after every real index


def _shift_right(x: jnp.ndarray, fill) -> jnp.ndarray:
    """x[..., t - 1] at t (fill at t = 0)."""
    pad = jnp.full(x.shape[:-1] + (1,), fill, x.dtype)
    return jnp.concatenate([pad, x[..., :-1]], axis=-1)


def _cummax(x: jnp.ndarray, reverse: bool = False) -> jnp.ndarray:
    return jax.lax.cummax(x, axis=x.ndim - 1, reverse=reverse)


def expand_neighbors(indices: jnp.ndarray, valid: jnp.ndarray, length: jnp.ndarray, out_size: int, *,
                     n_tokens: int, ascending: bool = False) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Neighbour-fetch expansion of index lists.

    indices, valid: [..., n] int32 / bool, the selected tokens I of each row (the valid entries
        must be distinct and lie in [0, length)). ascending=True promises that the valid entries
        already ascend along the row (invalid slots anywhere: `kernels.topk_select` output,
        any subset of it masked) and skips the one sort; otherwise any order.
    length: int array broadcastable to [...], E: the end of the selectable range; neighbours
        are clamped to E - 1 (on a decode step: the first token of the always-kept window).
    out_size: static number of output slots (the original's 2K). Needs out_size >= 2n to never
        truncate; a smaller one keeps the out_size lowest tokens (step 4's truncation).
    n_tokens: static bound on the token positions, > every index and >= E (the cache capacity).

    Returns (indices, valid) [..., out_size], distinct valid tokens < E: I, its neighbours and
    the fill of step 5, at most 2 * count(valid). With out_size >= 2n, slots [0, n) hold I (the
    input if ascending, else it sorted; valid as given), slots [n, 2n) each valid entry's new
    neighbour or a fill token, then padding. No sort but the optional input one, no search and
    no loop: one [..., n_tokens] tag row per list (-1 at the selected tokens) answers "is t
    selected" (run boundaries, neighbours inside I) by a gather, and a scatter-min of the slot
    numbers at the neighbours keeps one owner per duplicated neighbour. Truncation
    (out_size < 2n) sorts, lowest tokens first. Invalid slots hold index 0.
    """
    n = indices.shape[-1]
    lead = indices.shape[:-1]
    end = jnp.broadcast_to(jnp.asarray(length, jnp.int32)[..., None], (*lead, 1)).reshape(-1, 1)  # [R, 1]
    idx = indices.astype(jnp.int32).reshape(-1, n)
    ok = valid.reshape(-1, n)
    if not ascending:
        idx = jnp.sort(jnp.where(ok, idx, _BIG), axis=-1)
        ok = idx != _BIG
        idx = jnp.where(ok, idx, 0)
    rows = jnp.arange(idx.shape[0])[:, None]
    slot = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), idx.shape)
    at = lambda x, i: x[rows, i]  # noqa: E731 - x [R, n] read at slots i [R, n]
    drop = jnp.int32(n_tokens)  # an out-of-range position: scatters drop it

    # tag[t] = -1 where t is selected, _BIG elsewhere
    tag = jnp.full((idx.shape[0], n_tokens), _BIG, jnp.int32)
    tag = tag.at[rows, jnp.where(ok, idx, drop)].set(-1, mode="drop")
    selected = lambda t: jnp.take_along_axis(tag, jnp.clip(t, 0, n_tokens - 1), -1, mode="clip") < 0  # noqa: E731

    # 1. runs: an entry starts a run iff t - 1 is not selected, ends it iff t + 1 is not; the
    # valid entries ascend, so a count of the starts so far numbers each entry's run
    first = ok & ((idx == 0) | ~selected(idx - 1))
    last = ok & ((idx + 1 >= n_tokens) | ~selected(idx + 1))
    run = jnp.cumsum(first, axis=-1, dtype=jnp.int32) - 1
    run_first = jnp.zeros_like(idx).at[rows, jnp.where(first, run, n)].set(idx, mode="drop")
    run_last = jnp.zeros_like(idx).at[rows, jnp.where(last, run, n)].set(idx, mode="drop")
    run = jnp.clip(run, 0, n - 1)
    run_len = at(run_last, run) - at(run_first, run) + 1

    # 2.-3. each entry's neighbour t + c, if new: not past E - 1 (a clamped one is E - 1, which
    # its run also reaches unclamped or I holds), not selected, and the one owner among the
    # entries that share it (the smallest slot)
    nbr = idx + run_len
    candidate = ok & (nbr <= end - 1) & ~selected(nbr)
    tag = tag.at[rows, jnp.where(candidate, nbr, drop)].min(slot, mode="drop")
    new = candidate & (jnp.take_along_axis(tag, jnp.clip(nbr, 0, n_tokens - 1), -1, mode="clip") == slot)

    # 5. each duplicate's slot takes the next fill token last + 1, last + 2, ... while <= E - 1
    top = jnp.maximum(jnp.max(jnp.where(ok, idx, -1), -1, keepdims=True),
                      jnp.max(jnp.where(new, nbr, -1), -1, keepdims=True))
    dup = ok & ~new
    fill = top + jnp.cumsum(dup, axis=-1, dtype=jnp.int32)
    fill_ok = dup & (fill <= end - 1)
    out = jnp.concatenate([jnp.where(ok, idx, 0), jnp.where(new, nbr, jnp.where(fill_ok, fill, 0))], -1)
    out_ok = jnp.concatenate([ok, new | fill_ok], -1)
    out, out_ok = out.reshape(*lead, 2 * n), out_ok.reshape(*lead, 2 * n)

    # 4. fixed size: truncate (lowest tokens) or pad with invalid slots
    if out_size < 2 * n:
        out = jnp.sort(jnp.where(out_ok, out, _BIG), axis=-1)[..., :out_size]
        out_ok = out != _BIG
        return jnp.where(out_ok, out, 0), out_ok
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
    run_start = _cummax(jnp.where(sel & ~prev, t, -1))  # start of the run holding t
    run_end = ~sel & prev  # t is the first token after a run
    reach = _cummax(jnp.where(run_end, 2 * t - _shift_right(run_start, -1), -1))
    union = sel | ((reach > t) & (t < end))
    n_fill = 2 * sel.sum(-1, keepdims=True, dtype=jnp.int32) - union.sum(-1, keepdims=True, dtype=jnp.int32)
    last = jnp.max(jnp.where(union, t, -1), axis=-1, keepdims=True)
    return union | ((t > last) & (t <= last + n_fill) & (t < end))
