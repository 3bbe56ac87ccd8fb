"""Exact per-row top-K token selection (radix select by counting) with sinks and a recent window.

Every score maps to an order-preserving int32 key (f32 bits, negatives flipped); forced tokens
(sinks [0, n_sink) and the window [length - n_recent, length)) get FORCED_KEY, above every score
key; tokens at t >= length get INVALID_KEY (INT32_MIN), below every score key (-inf included).
The selection is then "the K largest keys, ties by lower index, INVALID never taken":

1. Radix passes (Pallas): each pass reads the row once and counts, per row, the keys >= 16
   candidate thresholds sharing the prefix found so far, fixing 4 more bits of the K-th largest
   key. f32 needs 8 passes; bf16 scores have 16 significant key bits, so 4 passes.
2. Compaction (Pallas, one more read): keys > threshold, plus the first (K - count_above) ties
   == threshold by index; per-block counts (one fused XLA read) give each block its slot and
   tie offsets, and each block scatters its indices by an in-block cumsum into [R, K].
   (`_compact`, an all-XLA cumsum + scatter variant, is kept for the benchmark's comparison.)

H100, 32 x 131072, K=8192 (bench/results/select_h100.md): 164 us f32, 104 us bf16, exact;
lax.top_k 996 / 608 us. The passes are compute-bound (16 compares per key), ~17 us each.

Output order: ascending token index within each row; slots past the row's selected count have
valid=False and index 0. NaN scores rank above +inf.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels._common import next_power_of_2, resolve_implementation

INVALID_KEY = np.int32(np.iinfo(np.int32).min)
FORCED_KEY = np.int32(0x7FFF0000)  # low 16 bits zero: bf16 rows still resolve in 4 passes.
_MAX_SCORE_KEY = np.int32(0x7FFE0000)  # only NaN keys lie outside [MIN, MAX]; clamp them.
_MIN_SCORE_KEY = np.int32(np.iinfo(np.int32).min + 0x10000)
_RADIX_BITS = 4
_N_THRESH = 1 << _RADIX_BITS
_BLOCK_T = 2048


def _keys(scores: jax.Array, pos: jax.Array, lengths: jax.Array, n_sink: int, n_recent: int):
    """Order-preserving int32 keys with forced / invalid tokens marked. scores [..., T] -> int32."""
    bits = jax.lax.bitcast_convert_type(scores.astype(jnp.float32), jnp.int32)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    if scores.dtype == jnp.bfloat16:
        key = key & np.int32(-65536)  # negatives flipped their zero low half; clear it again
    key = jnp.clip(key, _MIN_SCORE_KEY, _MAX_SCORE_KEY)
    forced = (pos < n_sink) | (pos >= lengths - n_recent)
    key = jnp.where(forced, FORCED_KEY, key)
    return jnp.where(pos < lengths, key, INVALID_KEY)


def _check(scores: jax.Array, k: int, lengths, n_sink: int, n_recent: int) -> jax.Array:
    if scores.ndim != 2:
        raise ValueError(f"scores must be [R, T], got shape {scores.shape}")
    if scores.dtype not in (jnp.float32, jnp.bfloat16):
        raise ValueError(f"scores must be float32 or bfloat16, got {scores.dtype}")
    r, t = scores.shape
    if not 0 < k <= t:
        raise ValueError(f"k must be in [1, T={t}], got k={k}")
    if n_sink < 0 or n_recent < 0 or n_sink + n_recent > k:
        raise ValueError(f"need 0 <= n_sink, n_recent and n_sink + n_recent <= k={k}; "
                         f"got n_sink={n_sink}, n_recent={n_recent}")
    if lengths is None:
        return jnp.full((r,), t, jnp.int32)
    if lengths.shape != (r,):
        raise ValueError(f"lengths must be [R={r}], got shape {lengths.shape}")
    return lengths.astype(jnp.int32)


def _compact(keys: jax.Array, thresh: jax.Array, k: int):
    """keys [R, T] int32, thresh [R] int32 (the K-th largest key) -> (indices, valid) [R, K]."""
    r, t = keys.shape
    th = thresh[:, None]
    above = keys > th
    tie = (keys == th) & (keys != INVALID_KEY)
    need = k - above.sum(axis=1, keepdims=True, dtype=jnp.int32)
    take = above | (tie & (jnp.cumsum(tie, axis=1, dtype=jnp.int32) <= need))
    slot = jnp.where(take, jnp.cumsum(take, axis=1, dtype=jnp.int32) - 1, k)
    idx = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (r, t))
    rows = jnp.broadcast_to(jnp.arange(r, dtype=jnp.int32)[:, None], (r, t))
    indices = jnp.zeros((r, k), jnp.int32).at[rows, slot].set(idx, mode="drop")
    count = take.sum(axis=1, dtype=jnp.int32)
    return indices, jnp.arange(k, dtype=jnp.int32)[None, :] < count[:, None]


def _compact_kernel(s_ref, len_ref, row_ref, blk_ref, o_ref, *, block_t, n_sink, n_recent):
    """One (row, token block): scatter the taken token indices into their slots of o_ref [1, K].

    row_ref [1, 2]: (threshold, ties needed); blk_ref [1, 2]: (slots and ties before this block).
    """
    j = pl.program_id(1)
    pos = j * block_t + jnp.arange(block_t, dtype=jnp.int32)
    key = _keys(s_ref[0, :], pos, len_ref[0, 0], n_sink, n_recent)
    th = row_ref[0, 0]
    tie = ((key == th) & (key != INVALID_KEY)).astype(jnp.int32)
    take = (key > th) | ((tie > 0) & (blk_ref[0, 1] + jnp.cumsum(tie) <= row_ref[0, 1]))
    slot = blk_ref[0, 0] + jnp.cumsum(take.astype(jnp.int32)) - 1
    # Untaken lanes aim at the spare last column: the interpreter's masked scatter rewrites them.
    slot = jnp.where(take, slot, o_ref.shape[1] - 1)
    plgpu.store(o_ref.at[0, slot], pos, mask=take)


def _compact_pallas(scores, lengths, thresh, k, *, block_t, n_sink, n_recent, interpret):
    """Pallas compaction; per-block counts (one fused XLA read) give each block its offsets."""
    r, tp = scores.shape
    nb = tp // block_t
    pos = jnp.arange(tp, dtype=jnp.int32).reshape(1, nb, block_t)
    keys = _keys(scores.reshape(r, nb, block_t), pos, lengths[:, None, None], n_sink, n_recent)
    th = thresh[:, None, None]
    above = (keys > th).sum(axis=2, dtype=jnp.int32)
    tie = ((keys == th) & (keys != INVALID_KEY)).sum(axis=2, dtype=jnp.int32)
    need = k - above.sum(axis=1, keepdims=True)
    tie_before = jnp.cumsum(tie, axis=1) - tie
    taken = above + jnp.clip(need - tie_before, 0, tie)
    blk = jnp.stack([jnp.cumsum(taken, axis=1) - taken, tie_before], axis=-1)
    row = jnp.concatenate([thresh[:, None], need], axis=1)
    out = pl.pallas_call(
        functools.partial(_compact_kernel, block_t=block_t, n_sink=n_sink, n_recent=n_recent),
        grid=(r, nb),
        in_specs=[
            pl.BlockSpec((1, block_t), lambda i, j: (i, j)),
            pl.BlockSpec((1, 1), lambda i, j: (i, 0)),
            pl.BlockSpec((1, 2), lambda i, j: (i, 0)),
            pl.BlockSpec((1, 2), lambda i, j: (i, j)),
        ],
        out_specs=pl.BlockSpec((1, next_power_of_2(k + 1)), lambda i, j: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((r, next_power_of_2(k + 1)), jnp.int32),
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
    )(scores, lengths[:, None], row, blk.reshape(r, nb * 2))
    valid = jnp.arange(k, dtype=jnp.int32)[None, :] < taken.sum(axis=1)[:, None]
    return jnp.where(valid, out[:, :k], 0), valid


def _count_kernel(s_ref, len_ref, thr_ref, o_ref, *, block_t, n_sink, n_recent):
    """One (row, token block): counts of keys >= each of the 16 thresholds -> o_ref [1, 16]."""
    j = pl.program_id(1)
    pos = j * block_t + jnp.arange(block_t, dtype=jnp.int32)
    key = _keys(s_ref[0, :], pos, len_ref[0, 0], n_sink, n_recent)
    thr = thr_ref[0, :]
    o_ref[0, :] = (key[None, :] >= thr[:, None]).astype(jnp.int32).sum(axis=1)


def _count_pass(scores, lengths2, thr, *, block_t, n_sink, n_recent, interpret):
    """scores [R, Tp], lengths2 [R, 1], thr [R, 16] int32 -> counts [R, 16] int32."""
    r, tp = scores.shape
    nb = tp // block_t
    partial = pl.pallas_call(
        functools.partial(_count_kernel, block_t=block_t, n_sink=n_sink, n_recent=n_recent),
        grid=(r, nb),
        in_specs=[
            pl.BlockSpec((1, block_t), lambda i, j: (i, j)),
            pl.BlockSpec((1, 1), lambda i, j: (i, 0)),
            pl.BlockSpec((1, _N_THRESH), lambda i, j: (i, 0)),
        ],
        out_specs=pl.BlockSpec((1, _N_THRESH), lambda i, j: (i, j)),
        out_shape=jax.ShapeDtypeStruct((r, nb * _N_THRESH), jnp.int32),
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
    )(scores, lengths2, thr)
    return partial.reshape(r, nb, _N_THRESH).sum(axis=1)


def _pad_to_blocks(scores: jax.Array) -> tuple[jax.Array, int]:
    """Pad T up to a multiple of the token block (padding is past every length). -> (scores, block)."""
    t = scores.shape[1]
    block_t = min(_BLOCK_T, next_power_of_2(t))
    tp = -(-t // block_t) * block_t
    return (jnp.pad(scores, ((0, 0), (0, tp - t))) if tp != t else scores), block_t


def _radix_threshold(scores, lengths, k, *, block_t, n_sink, n_recent, interpret):
    """The K-th largest key per row (INVALID_KEY when fewer than K valid tokens). -> [R] int32."""
    r = scores.shape[0]
    key_bits = 16 if scores.dtype == jnp.bfloat16 else 32
    lengths2 = lengths[:, None]
    digits = jnp.arange(_N_THRESH, dtype=jnp.uint32)
    prefix = jnp.zeros((r,), jnp.uint32)  # unsigned view: key ^ 0x80000000
    for shift in range(32 - _RADIX_BITS, 32 - key_bits - 1, -_RADIX_BITS):
        cand_u = prefix[:, None] | (digits[None, :] << shift)
        thr = jax.lax.bitcast_convert_type(cand_u ^ np.uint32(0x80000000), jnp.int32)
        counts = _count_pass(scores, lengths2, thr, block_t=block_t, n_sink=n_sink,
                             n_recent=n_recent, interpret=interpret)
        digit = (counts >= k).sum(axis=1, dtype=jnp.int32) - 1  # counts[0] >= k by invariant
        prefix = prefix | (jnp.maximum(digit, 0).astype(jnp.uint32) << shift)
    return jax.lax.bitcast_convert_type(prefix ^ np.uint32(0x80000000), jnp.int32)


@functools.partial(jax.jit, static_argnames=("k", "n_sink", "n_recent", "interpret",
                                             "compaction"))
def _topk_select_pallas(scores, lengths, k, n_sink, n_recent, interpret, compaction="pallas"):
    t = scores.shape[1]
    scores, block_t = _pad_to_blocks(scores)
    thresh = _radix_threshold(scores, lengths, k, block_t=block_t, n_sink=n_sink,
                              n_recent=n_recent, interpret=interpret)
    if compaction == "pallas":
        return _compact_pallas(scores, lengths, thresh, k, block_t=block_t, n_sink=n_sink,
                               n_recent=n_recent, interpret=interpret)
    pos = jnp.arange(t, dtype=jnp.int32)[None, :]
    return _compact(_keys(scores[:, :t], pos, lengths[:, None], n_sink, n_recent), thresh, k)


@functools.partial(jax.jit, static_argnames=("k", "n_sink", "n_recent"))
def _topk_select_xla(scores, lengths, k, n_sink, n_recent):
    pos = jnp.arange(scores.shape[1], dtype=jnp.int32)[None, :]
    keys = _keys(scores, pos, lengths[:, None], n_sink, n_recent)
    top, idx = jax.lax.top_k(keys, k)  # stable: equal keys come out lower index first
    valid = top != INVALID_KEY
    order = jnp.argsort(jnp.where(valid, idx, scores.shape[1]), axis=1)
    return (jnp.where(jnp.take_along_axis(valid, order, 1), jnp.take_along_axis(idx, order, 1), 0),
            jnp.take_along_axis(valid, order, 1))


def topk_select_reference(scores: jax.Array, k: int, lengths: jax.Array | None = None, *,
                          n_sink: int = 0, n_recent: int = 0, implementation: str = "xla",
                          interpret: bool = False) -> tuple[jax.Array, jax.Array]:
    """lax.top_k reference of `topk_select` (same semantics and output order).

    `implementation` and `interpret` are accepted for signature parity and ignored.
    """
    lengths = _check(scores, k, lengths, n_sink, n_recent)
    return _topk_select_xla(scores, lengths, k, n_sink, n_recent)


def topk_select(scores: jax.Array, k: int, lengths: jax.Array | None = None, *, n_sink: int = 0,
                n_recent: int = 0, implementation: str = "auto",
                interpret: bool = False) -> tuple[jax.Array, jax.Array]:
    """Select per row the forced tokens plus the best K - n_forced of the rest.

    scores: [R, T] f32 or bf16 (-inf allowed); lengths: [R] int32 or None (= T); token t of row r
    is valid iff t < lengths[r]. Forced: [0, n_sink) and [length - n_recent, length), inside the
    K budget. The others are ranked by score, ties to the lower index.
    Returns indices [R, K] int32 in ascending token order and valid [R, K] bool; slots past the
    row's count (fewer than K valid tokens) are valid=False with index 0.
    """
    lengths = _check(scores, k, lengths, n_sink, n_recent)
    if resolve_implementation(implementation, interpret) == "xla":
        return _topk_select_xla(scores, lengths, k, n_sink, n_recent)
    return _topk_select_pallas(scores, lengths, k, n_sink, n_recent, interpret)
