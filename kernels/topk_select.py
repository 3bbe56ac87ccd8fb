"""Exact per-row top-K token selection with sinks and a recent window: the sampled bracket select
(radix fallback) and the 16-way radix select ("auto", the default, takes the faster by dtype and
row count), the Triton radix-histogram select, and their lax.top_k reference.

Every score maps to an order-preserving int32 key (f32 bits, negatives flipped); forced tokens
(sinks [0, n_sink) and the window [length - n_recent, length)) get FORCED_KEY, above every score
key; tokens at t >= length get INVALID_KEY (INT32_MIN), below every score key (-inf included).
The selection is then "the K largest keys, ties by lower index, INVALID never taken". All
methods find th, the K-th largest key of the row, and emit the keys > th plus the first
(K - count above) keys == th by index, in ascending token order.

Sampled bracket select (method="sampled"; four Pallas
kernels, two reads of the row):

1. Guess (grid (R,)): a stratified sample of `sample` keys over the row's valid tokens
   [0, length) (chunks of `chunk` contiguous keys at evenly spaced positions). With q = K /
   length and S valid samples, the keys of sample rank q*S -/+ m (m = `_SIGMAS` binomial
   standard deviations sqrt(S q (1 - q)) + `_SLACK`) become the bracket [lo, hi), rounded
   outward to `_GUESS_BITS` key bits. Rows with length <= K take everything valid.
2. Bracket pass (grid (R, n_seg), a loop over token blocks in each segment): per segment the
   count of keys >= hi, and the keys in [lo, hi) written to that segment's `cap` slots of a
   candidate buffer (in-block cumsum + running offset; masked scatter).
3. Threshold (grid (R,)): the candidates gathered densely into `lanes` register lanes; th =
   the (K - #keys >= hi)-th largest of them, by the same in-register radix search as step 1
   (`_search`); per segment the keys > th and the ties == th give each segment its first
   output slot and the ties before it.
4. Emit pass (grid (R, n_seg)): reads the row again and scatters the taken token indices to
   their slots (the segment's offsets + in-block cumsums).

The result is exact whenever the bracket holds (#keys >= hi < K <= #keys >= lo) and no
segment overflowed its `cap` slots; the threshold kernel checks this per row, and
if any row fails (heavy ties at th, adversarial or strongly clustered scores) the whole call
takes the radix path below through `jax.lax.cond`. Sizes (`_plan`): 16 segments of >= 2048
tokens; `cap` holds 1.5x a segment's expected band (+4 std + 16) at the worst band density over
the lengths (K, T], `lanes` 1.25x a whole row's band at length T (its largest), so shorter rows
stay on the fast path. Rows shorter than `_MIN_SAMPLED_T` tokens always use the radix path.

Radix select (method="radix", and the sampled path's fallback):

1. Radix passes (Pallas): each pass reads the row once and counts, per row, the keys >= 16
   candidate thresholds sharing the prefix found so far, fixing 4 more bits of the K-th largest
   key. f32 needs 8 passes; bf16 scores have 16 significant key bits, so 4 passes.
2. Compaction (Pallas, one more read): per-block counts (one fused XLA read) give each block
   its slot and tie offsets, and each block scatters its indices by an in-block cumsum.

H200, 2026-12-02 at 76077e2 (bench/results/select_h200.md), 8 x 131072 f32: sampled 72.1 us
(device 56.2: guess 20.8, threshold 14.6, emit 8.3, bracket 7.5; the radix search compares one
scalar threshold a count, which cut guess / threshold from 32.7 / 17.6), radix 79.3 (its 8 count
passes 36.1 in all, the XLA glue between them ~35); 32 rows 94.4 / 166.5; lax.top_k 215 / 973.
H100, 32 x 131072, K=8192 (bench/results/select_h100.md): sampled 106 us f32 / 90 us bf16,
radix 170 / 107 us, lax.top_k 994 / 614 us; 8 rows: radix 87 / 53 us.

Radix-histogram select (method="histogram", topk_select_triton.py): raw Triton kernels through
jax_triton (CUDA GPU only), which can histogram in shared memory (tl.histogram) where Pallas'
Triton lowering cannot: grid (R, token chunks) radix-histogram passes over 8-bit digits with
global atomics (f32 4 passes, bf16 2), each recomputing the digits so far from the global
histograms, and one emit pass; no XLA glue between them.

Output order: ascending token index within each row; slots past the row's selected count have
valid=False and index 0. NaN scores rank above +inf.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from butler_jax.kernels._common import cdiv, next_power_of_2, resolve_implementation

from butler_jax.kernels.select_keys import FORCED_KEY, INVALID_KEY, _HI_ALL, _MIN_SCORE_KEY
from butler_jax.kernels.select_keys import check_select_args as _check
from butler_jax.kernels.select_keys import select_keys as _keys
_RADIX_BITS = 4
_N_THRESH = 1 << _RADIX_BITS
_BLOCK_T = 2048
METHODS = ("auto", "sampled", "radix", "histogram")

_SAMPLE = 4096  # sampled keys per row (guess kernel)
_SAMPLE_CHUNK = 8  # contiguous keys per sample chunk: one 32-byte sector of f32 scores
_SIGMAS = 4.5  # bracket margin in binomial standard deviations of the sample rank ...
_SLACK = 4  # ... plus this many sample ranks
_GUESS_BITS = 20  # key bits the guess resolves for f32 (bf16 keys have 16)
_SEGMENTS = 16  # target segments per row: programs per row of the bracket and emit passes
_STEP_BITS = 1  # key bits per in-register search iteration (`_digit_search`)
_MIN_SAMPLED_T = 256  # shorter rows go straight to the radix path
# "auto" takes the sampled path, except bf16 below this many rows (radix): H200 2026-12-02 at
# 76077e2 (bench/results/select_h200.md), f32: 8 rows sampled 72.1 us, radix 79.3; 32 rows 94.4 /
# 166.5; bf16 (2026-11-26, before the scalar search) radix 58.3 us at 8 rows, 109.7 at 32.
_MIN_SAMPLED_ROWS_BF16 = 16


class _Plan(NamedTuple):
    """Static sizes of the sampled path (see `_plan`)."""
    block: int  # tokens per loop step of the bracket / emit passes
    seg: int  # tokens per segment (one program of the bracket / emit grids)
    n_seg: int  # segments per row (a power of 2; trailing ones may lie past T)
    cap: int  # candidate slots per segment
    lanes: int  # register lanes of the threshold search (candidates per row it can take)
    sample: int  # sampled keys per row
    chunk: int  # contiguous keys per sample chunk
    step: int  # key bits per search iteration (2**step - 1 thresholds)
    guess_bits: int  # key bits the guess resolves for f32, rounding the bracket outward
    warps: int  # num_warps of the bracket / emit passes
    small_warps: int  # num_warps of the per-row guess / threshold kernels


def _plan(t: int, k: int, **overrides) -> _Plan:
    """Sizes for rows of T tokens and K selected.

    The expected band [lo, hi) holds 2 (m + 1) / S of a row's n valid tokens (m = the margin in
    sample ranks, 4.5 sqrt(S q (1 - q)) + 4 with q = K / n). Its density peaks at the largest
    q(1 - q) over the lengths n in (K, T] (1/4 if 2K <= T): `cap` covers 1.5x the band of one
    segment at that density + 4 std + 16. Its size in tokens grows with n (~sqrt(K n - K^2)), so
    it peaks at n = T: `lanes` covers 1.25x the band of a full row + 4 std + 16.
    """
    block = min(_BLOCK_T, next_power_of_2(t))
    seg = max(block, next_power_of_2(cdiv(t, _SEGMENTS)))
    n_seg = next_power_of_2(cdiv(t, seg))
    sample = min(_SAMPLE, next_power_of_2(t))

    def band_fraction(qq: float) -> float:
        return 2 * (_SIGMAS * math.sqrt(sample * qq) + _SLACK + 1) / sample

    worst_qq = 0.25 if 2 * k <= t else (k / t) * (1 - k / t)
    per_seg = band_fraction(worst_qq) * seg
    per_row = band_fraction((k / t) * (1 - k / t)) * t
    cap = min(next_power_of_2(int(1.5 * per_seg + 4 * math.sqrt(per_seg) + 16)), 2 * seg)
    lanes = min(next_power_of_2(int(1.25 * per_row + 4 * math.sqrt(per_row) + 16)), n_seg * cap)
    plan = _Plan(block=block, seg=seg, n_seg=n_seg, cap=cap, lanes=lanes, sample=sample,
                 chunk=min(_SAMPLE_CHUNK, sample), step=_STEP_BITS, guess_bits=_GUESS_BITS,
                 warps=4, small_warps=16)
    return plan._replace(**overrides)


# ----------------------------------------------------------------------------- sampled bracket


def _digit_search(count_ge, ks, nbits, low_bit: int, step: int):
    """Radix search for the k-th largest values, `step` (1 or 2) bits per iteration.

    count_ge(x): x uint32 scalar -> int32 scalar, the number of values u >= x (u are uint32
    offsets from a base; u = 0 never counts). ks: targets (int32 scalars >= 1); the search
    covers x < 2**nbits (nbits <= 32, may be traced) whose `low_bit` lowest bits are zero.
    Returns, for each k, the largest such x with >= k values u >= x (0 when there is none).
    Each count compares the values with one scalar: no broadcast to a larger tensor, whose
    layout conversion made the [2**step, ...] form slower on the H200 (guess kernel 32.7 -> 20.8 us).
    """
    n_iter = jnp.maximum((nbits - low_bit + step - 1) // step, 0)
    top = low_bit + (n_iter - 1) * step

    def body(it, prefixes):
        shift = (top - it * step).astype(jnp.uint32)
        out = []
        for p, k in zip(prefixes, ks):
            digit = jnp.uint32(0)
            for d in range(1, 1 << step):  # counts fall with d: the digit is #d with count >= k
                digit = digit + (count_ge(p | (jnp.uint32(d) << shift)) >= k).astype(jnp.uint32)
            out.append(p | (digit << shift))
        return tuple(out)

    return jax.lax.fori_loop(0, n_iter, body, tuple(jnp.uint32(0) for _ in ks))


def _search(keys, ks, base, nbits, low_bit: int, step: int):
    """k-th largest keys of a register-resident array by `_digit_search`.

    keys: int32 array (any shape; keys < base never count); ks: targets (int32 scalars >= 1);
    the search covers v = base + x for x < 2**nbits whose `low_bit` lowest bits are zero.
    Returns, for each k, the largest such v with at least k keys >= v (base when there is none).
    """
    xs = _digit_search(_count_registers(_offsets(keys, base)), ks, nbits, low_bit, step)
    return [base + jax.lax.bitcast_convert_type(x, jnp.int32) for x in xs]


def _offsets(keys, base, top=None):
    """uint32 offsets key - base of the keys in [base, top) (0 for the others)."""
    inside = keys >= base if top is None else (keys >= base) & (keys < top)
    return jnp.where(inside, jax.lax.bitcast_convert_type(keys - base, jnp.uint32), jnp.uint32(0))


def _count_registers(u):
    """count_ge of `_digit_search` over a register-resident array u (any shape)."""
    def count(x):
        cnt = (u >= x).astype(jnp.int32)
        while cnt.ndim:  # one axis at a time (Triton reduces one axis per op)
            cnt = jnp.sum(cnt, axis=-1)
        return cnt
    return count


def sample_positions(n, plan: _Plan):
    """Token positions [sample / chunk, chunk] of the guess kernel's sample of a row with n valid
    tokens: `chunk` contiguous tokens at evenly spaced starts (all tokens when n <= sample);
    positions >= n are not sampled."""
    nch = plan.sample // plan.chunk
    c = jnp.arange(nch, dtype=jnp.int32)[:, None]
    j = jnp.arange(plan.chunk, dtype=jnp.int32)[None, :]
    start = c * (n // nch) + (c * (n % nch)) // nch  # evenly spaced; no int32 overflow
    return jnp.where(n > plan.sample, start - start % plan.chunk + j, c * plan.chunk + j)


def _guess_kernel(s_ref, len_ref, o_ref, *, t, k, plan, low_bit, n_sink, n_recent):
    """One row: the bracket [lo, hi) from a stratified sample -> o_ref [1, 2] = (hi, lo)."""
    length = len_ref[0, 0]
    n = jnp.minimum(length, t)
    pos = sample_positions(n, plan)
    inside = pos < n
    pos = jnp.where(inside, pos, 0)
    x = plgpu.load(s_ref.at[pos], mask=inside, other=0)
    key = jnp.where(inside, _keys(x, pos, length, n_sink, n_recent), INVALID_KEY)
    s_valid = jnp.sum(inside.astype(jnp.int32))
    sf = s_valid.astype(jnp.float32)
    q = k / jnp.maximum(n, 1).astype(jnp.float32)
    rank = q * sf
    margin = _SIGMAS * jnp.sqrt(sf * q * jnp.maximum(1.0 - q, 0.0)) + _SLACK
    r_hi = jnp.floor(rank - margin).astype(jnp.int32)
    r_lo = jnp.ceil(rank + margin).astype(jnp.int32)
    v_hi, v_lo = _search(key, (jnp.maximum(r_hi, 1), jnp.clip(r_lo, 1, s_valid)),
                         INVALID_KEY, 32, low_bit, plan.step)
    hi = jnp.where((r_hi < 1) | (v_hi >= FORCED_KEY), _HI_ALL, v_hi + (1 << low_bit))
    lo = jnp.where(r_lo > s_valid, _MIN_SCORE_KEY, v_lo)
    trivial = n <= k  # everything valid is taken: no band, every valid key counts as >= hi
    hi = jnp.where(trivial, _MIN_SCORE_KEY, hi)
    lo = jnp.where(trivial, _MIN_SCORE_KEY, lo)
    o_ref[0, :] = jnp.where(jnp.arange(2) == 0, hi, lo)


def _segment(len_ref, *, t, plan):
    """This (row, segment) program's first token, the row's length, its valid tokens n and the
    segment's token blocks holding valid tokens."""
    seg0 = pl.program_id(1) * plan.seg
    length = len_ref[0, 0]
    n = jnp.minimum(length, t)
    n_blocks = jnp.clip((n - seg0 + plan.block - 1) // plan.block, 0, plan.seg // plan.block)
    return seg0, length, n, n_blocks


def _block_keys(s_ref, b, seg0, length, n, *, plan, n_sink, n_recent):
    """Token block b of a segment: (positions, keys) [block], tokens >= n read as invalid."""
    start = pl.multiple_of(seg0 + b * plan.block, plan.block)
    pos = start + jnp.arange(plan.block, dtype=jnp.int32)
    x = plgpu.load(s_ref.at[pl.ds(start, plan.block)], mask=pos < n, other=0)
    return pos, _keys(x, pos, length, n_sink, n_recent)


def _bracket_kernel(s_ref, len_ref, g_ref, key_ref, cnt_ref, *, t, plan, n_sink, n_recent):
    """One (row, segment): keys in [lo, hi) -> key_ref [cap]; cnt_ref [1, 2] = (#>= hi, #band)."""
    seg0, length, n, n_blocks = _segment(len_ref, t=t, plan=plan)
    hi, lo = g_ref[0, 0], g_ref[0, 1]

    def body(b, carry):
        off, n_hi = carry
        _, key = _block_keys(s_ref, b, seg0, length, n, plan=plan, n_sink=n_sink, n_recent=n_recent)
        band = ((key >= lo) & (key < hi)).astype(jnp.int32)
        slot = off + jnp.cumsum(band) - 1
        keep = (band > 0) & (slot < plan.cap)
        # Dropped lanes aim past the block: never stored on the GPU, dropped by the interpreter.
        plgpu.store(key_ref.at[jnp.where(keep, slot, plan.cap)], key, mask=keep)
        return off + jnp.sum(band), n_hi + jnp.sum((key >= hi).astype(jnp.int32))

    n_band, n_hi = jax.lax.fori_loop(0, n_blocks, body, (jnp.int32(0), jnp.int32(0)))
    cnt_ref[0, :] = jnp.where(jnp.arange(2) == 0, n_hi, n_band)


def _threshold_kernel(key_ref, cnt_ref, len_ref, g_ref, row_ref, slot_ref, tie_ref, *, t, k,
                      plan, low_bit):
    """One row: th and per-segment offsets from the candidates.

    key_ref [n_seg, cap], cnt_ref [1, n_seg, 2] -> row_ref [1, 4] = (th, ties needed, count,
    ok); slot_ref / tie_ref [1, n_seg]: output slots / ties == th before each segment.
    """
    n_seg, cap, lanes = plan.n_seg, plan.cap, plan.lanes
    n = jnp.minimum(len_ref[0, 0], t)
    hi, lo = g_ref[0, 0], g_ref[0, 1]
    n_hi_seg = cnt_ref[0, :, 0]
    n_band_seg = cnt_ref[0, :, 1]
    held = jnp.minimum(n_band_seg, cap)
    n_hi = jnp.sum(n_hi_seg)
    n_band = jnp.sum(n_band_seg)
    need = k - n_hi
    trivial = n <= k
    ok = trivial | ((n_hi < k) & (n_band >= need) & (jnp.max(n_band_seg) <= cap)
                    & (n_band <= lanes))
    # Gather the held candidates densely: lane j -> (segment, slot).
    lane = jnp.arange(lanes, dtype=jnp.int32)
    before = jnp.cumsum(held)[:, None] <= lane[None, :]  # [n_seg, lanes]: segment before lane
    seg_j = jnp.sum(before.astype(jnp.int32), axis=0)
    off_j = lane - jnp.sum(jnp.where(before, held[:, None], 0), axis=0)
    lane_ok = seg_j < n_seg
    cand = plgpu.load(key_ref.at[jnp.where(lane_ok, seg_j, 0), jnp.where(lane_ok, off_j, 0)],
                      mask=lane_ok, other=INVALID_KEY)
    span = jax.lax.bitcast_convert_type(hi - lo, jnp.uint32)
    nbits = jnp.where(span > 1, 32 - jax.lax.clz((span - 1).astype(jnp.int32)), 0)
    (th,) = _search(cand, (jnp.maximum(need, 1),), lo, nbits, low_bit, plan.step)
    th = jnp.where(trivial, INVALID_KEY, th)
    # Per segment: keys > th and ties == th (all inside the band, hence among the candidates).
    held_mask = jnp.arange(cap, dtype=jnp.int32)[None, :] < held[:, None]
    keys = key_ref[...]
    gt = jnp.sum((held_mask & (keys > th)).astype(jnp.int32), axis=1)
    eq = jnp.sum((held_mask & (keys == th)).astype(jnp.int32), axis=1)
    above = n_hi_seg + gt
    ties_needed = k - jnp.sum(above)
    ties_before = jnp.cumsum(eq) - eq
    taken = above + jnp.clip(ties_needed - ties_before, 0, eq)
    slot_ref[0, :] = jnp.cumsum(taken) - taken
    tie_ref[0, :] = ties_before
    col = jnp.arange(4)
    row_ref[0, :] = jnp.where(col == 0, th, jnp.where(col == 1, ties_needed, jnp.where(
        col == 2, jnp.sum(taken), ok.astype(jnp.int32))))


def _emit_kernel(s_ref, len_ref, row_ref, slot_ref, tie_ref, o_ref, *, t, k, plan, n_sink,
                 n_recent):
    """One (row, segment): scatter the taken token indices into their slots of o_ref [K]."""
    seg0, length, n, n_blocks = _segment(len_ref, t=t, plan=plan)
    th, ties_needed, ok = row_ref[0, 0], row_ref[0, 1], row_ref[0, 3]
    n_blocks = jnp.where(ok != 0, n_blocks, 0)  # a failed row is recomputed by the fallback

    def body(b, carry):
        slot0, tie0 = carry
        pos, key = _block_keys(s_ref, b, seg0, length, n, plan=plan, n_sink=n_sink, n_recent=n_recent)
        tie = ((key == th) & (key != INVALID_KEY)).astype(jnp.int32)
        take = (key > th) | ((tie > 0) & (tie0 + jnp.cumsum(tie) <= ties_needed))
        slot = slot0 + jnp.cumsum(take.astype(jnp.int32)) - 1
        keep = take & (slot < k)
        # Dropped lanes aim past the block: never stored on the GPU, dropped by the interpreter.
        plgpu.store(o_ref.at[jnp.where(keep, slot, k)], pos, mask=keep)
        return slot0 + jnp.sum(take.astype(jnp.int32)), tie0 + jnp.sum(tie)

    jax.lax.fori_loop(0, n_blocks, body, (slot_ref[0, 0], tie_ref[0, 0]))


def _sampled_select(scores, lengths, k, *, n_sink, n_recent, interpret, plan):
    """Sampled bracket select. -> ((indices, valid) [R, K], ok [R] bool: row is exact)."""
    r, t = scores.shape
    bf16 = scores.dtype == jnp.bfloat16
    guess_low_bit = 16 if bf16 else 32 - plan.guess_bits
    exact_low_bit = 16 if bf16 else 0  # bf16 keys have zero low halves
    lengths2 = lengths[:, None]
    ns = plan.n_seg
    row_spec = pl.BlockSpec((None, t), lambda i, *_: (i, 0))
    len_spec = pl.BlockSpec((1, 1), lambda i, *_: (i, 0))
    small = plgpu.CompilerParams(num_warps=plan.small_warps, num_stages=1)
    passes = plgpu.CompilerParams(num_warps=plan.warps, num_stages=2)
    kw = dict(n_sink=n_sink, n_recent=n_recent)

    guess = pl.pallas_call(
        functools.partial(_guess_kernel, t=t, k=k, plan=plan, low_bit=guess_low_bit, **kw),
        grid=(r,),
        in_specs=[row_spec, len_spec],
        out_specs=pl.BlockSpec((1, 2), lambda i: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((r, 2), jnp.int32),
        compiler_params=small, interpret=interpret, name="topk_guess",
    )(scores, lengths2)

    cand, counts = pl.pallas_call(
        functools.partial(_bracket_kernel, t=t, plan=plan, **kw),
        grid=(r, ns),
        in_specs=[row_spec, len_spec, pl.BlockSpec((1, 2), lambda i, s: (i, 0))],
        out_specs=[pl.BlockSpec((None, plan.cap), lambda i, s: (i, s)),
                   pl.BlockSpec((1, 2), lambda i, s: (i, s))],
        out_shape=[jax.ShapeDtypeStruct((r, ns * plan.cap), jnp.int32),
                   jax.ShapeDtypeStruct((r, ns * 2), jnp.int32)],
        compiler_params=passes, interpret=interpret, name="topk_bracket",
    )(scores, lengths2, guess)

    row, slot, ties = pl.pallas_call(
        functools.partial(_threshold_kernel, t=t, k=k, plan=plan, low_bit=exact_low_bit),
        grid=(r,),
        in_specs=[pl.BlockSpec((None, ns, plan.cap), lambda i: (i, 0, 0)),
                  pl.BlockSpec((1, ns, 2), lambda i: (i, 0, 0)),
                  len_spec, pl.BlockSpec((1, 2), lambda i: (i, 0))],
        out_specs=[pl.BlockSpec((1, 4), lambda i: (i, 0)),
                   pl.BlockSpec((1, ns), lambda i: (i, 0)),
                   pl.BlockSpec((1, ns), lambda i: (i, 0))],
        out_shape=[jax.ShapeDtypeStruct((r, 4), jnp.int32),
                   jax.ShapeDtypeStruct((r, ns), jnp.int32),
                   jax.ShapeDtypeStruct((r, ns), jnp.int32)],
        compiler_params=small, interpret=interpret, name="topk_threshold",
    )(cand.reshape(r, ns, plan.cap), counts.reshape(r, ns, 2), lengths2, guess)

    seg_spec = pl.BlockSpec((1, 1), lambda i, s: (i, s))
    out = pl.pallas_call(
        functools.partial(_emit_kernel, t=t, k=k, plan=plan, **kw),
        grid=(r, ns),
        in_specs=[row_spec, len_spec, pl.BlockSpec((1, 4), lambda i, s: (i, 0)), seg_spec,
                  seg_spec],
        out_specs=pl.BlockSpec((None, k), lambda i, s: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((r, k), jnp.int32),
        compiler_params=passes, interpret=interpret, name="topk_emit",
    )(scores, lengths2, row, slot, ties)
    valid = jnp.arange(k, dtype=jnp.int32)[None, :] < row[:, 2:3]
    return (jnp.where(valid, out, 0), valid), row[:, 3] != 0


# ----------------------------------------------------------------------------- radix select


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


def _radix_select(scores, lengths, k, *, n_sink, n_recent, interpret):
    scores, block_t = _pad_to_blocks(scores)
    thresh = _radix_threshold(scores, lengths, k, block_t=block_t, n_sink=n_sink,
                              n_recent=n_recent, interpret=interpret)
    return _compact_pallas(scores, lengths, thresh, k, block_t=block_t, n_sink=n_sink,
                           n_recent=n_recent, interpret=interpret)


@functools.partial(jax.jit, static_argnames=("k", "n_sink", "n_recent", "interpret", "method"))
def _topk_select_pallas(scores, lengths, k, n_sink, n_recent, interpret, method="auto"):
    if method == "histogram":
        from butler_jax.kernels.topk_select_triton import histogram_select
        return histogram_select(scores, lengths, k, n_sink=n_sink, n_recent=n_recent)
    kw = dict(n_sink=n_sink, n_recent=n_recent, interpret=interpret)
    r, t = scores.shape
    radix_auto = method == "auto" and scores.dtype == jnp.bfloat16 and r < _MIN_SAMPLED_ROWS_BF16
    if method == "radix" or t < _MIN_SAMPLED_T or radix_auto:
        return _radix_select(scores, lengths, k, **kw)
    fast, ok = _sampled_select(scores, lengths, k, plan=_plan(t, k), **kw)
    return jax.lax.cond(jnp.all(ok), lambda: fast,
                        lambda: _radix_select(scores, lengths, k, **kw))


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
                n_recent: int = 0, implementation: str = "auto", interpret: bool = False,
                method: str = "auto") -> tuple[jax.Array, jax.Array]:
    """Select per row the forced tokens plus the best K - n_forced of the rest.

    scores: [R, T] f32 or bf16 (-inf allowed); lengths: [R] int32 or None (= T); token t of row r
    is valid iff t < lengths[r]. Forced: [0, n_sink) and [length - n_recent, length), inside the
    K budget. The others are ranked by score, ties to the lower index.
    method (Pallas only): "auto" (default) = "sampled", except "radix" for bf16 below 16 rows
    (the faster measured); "sampled" = sampled bracket select, falling back to the radix select
    when its bracket fails for any row; "radix" = the 16-way radix select; "histogram" = raw
    Triton radix-histogram kernels through jax_triton (CUDA GPU only, no interpret mode; see
    topk_select_triton.py). All are exact.
    Returns indices [R, K] int32 in ascending token order and valid [R, K] bool; slots past the
    row's count (fewer than K valid tokens) are valid=False with index 0.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    lengths = _check(scores, k, lengths, n_sink, n_recent)
    if resolve_implementation(implementation, interpret) == "xla":
        return _topk_select_xla(scores, lengths, k, n_sink, n_recent)
    if method == "histogram" and interpret:
        raise ValueError("method='histogram' runs Triton kernels through jax_triton on a CUDA GPU "
                         "and has no Pallas interpret mode; pass interpret=False (its CPU tests "
                         "run the same kernels in Triton's interpreter: "
                         "tests/test_topk_select_triton.py)")
    return _topk_select_pallas(scores, lengths, k, n_sink, n_recent, interpret, method)
