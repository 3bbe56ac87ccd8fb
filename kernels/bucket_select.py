"""Exact per-row top-K in two Pallas launches, many programs per row: the bucketed bracket select.

Same keys and semantics as `kernels.topk_select` (order-preserving int32 keys of
`kernels.select_keys`: forced tokens FORCED_KEY, tokens >= length INVALID_KEY; the K largest keys,
ties to the lower index, INVALID never taken; output in ascending token order). Each row of T
keys is cut into C chunks (`BucketPlan.chunk` keys each, ~512 programs per call), and both
kernels run on the grid (R, C):

1. Count kernel. Every program first computes its row's bracket [lo, hi) from a stratified
   sample of `sample` keys (the same in every program of the row; the sample is a few KB of L2
   reads): with q = K / n (n = min(length, T) valid tokens) and S valid samples, the sample's
   keys of rank q S -/+ m (m = 4.5 binomial standard deviations + 4) give hi / lo, rounded
   outward to `guess_bits` key bits. NB thresholds th[0] = lo < ... < th[NB-1] = hi, evenly
   spaced in key space, cut the bracket into NB-1 buckets. The program then reads its chunk
   once and writes, per chunk, ge[m] = #keys >= th[m] and each in-bracket key to its bucket's
   `cap` slots (rank inside the bucket by a cumsum of the bucket one-hot).
2. Emit kernel. Every program sums the row's ge counts over the chunks (C x NB ints), finds
   the bucket j holding the K-th largest key (ge[j] >= K > ge[j+1]), loads only that bucket's
   keys from all chunks (C x cap slots) and finds th = the (K - ge[j+1])-th largest of them by
   a radix search over the bucket's key bits; per chunk the keys > th and the ties == th give
   the chunk's first output slot and the ties before it. It then reads its chunk again and
   scatters the taken token indices (in-block cumsum); the row's last program zeroes the slots
   past the row's count.

The fast path is exact whenever the bracket holds (ge[NB-1] < K <= ge[0]) and no chunk has
more keys in bucket j than `cap` (or bucket j spans a single key value: then th is its lower
bound and its keys are all ties). Otherwise (heavy ties, adversarial or clustered scores) the
emit programs of that row find th by the same radix search streamed over the whole row (inside
bucket j when the bracket held, else over all key bits) plus one counting pass, then emit as
above: always exact, no `lax.cond`, no host round trip; only such rows pay (up to ~32 x 3 key
compares a token, per program). Rows with n <= K take every valid token.
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

from butler_jax.kernels._common import cdiv, next_power_of_2
from butler_jax.kernels.select_keys import FORCED_KEY, INVALID_KEY, _HI_ALL, _MIN_SCORE_KEY
from butler_jax.kernels.select_keys import check_select_args, select_keys

_SIGMAS = 4.5  # bracket margin in binomial standard deviations of the sample rank ...
_SLACK = 4  # ... plus this many sample ranks
_TARGET_PROGRAMS = 512  # programs per call the chunk size aims at (132 SMs)


class BucketPlan(NamedTuple):
    """Static sizes of the bucketed bracket select (`bucket_plan`)."""
    block: int  # keys per loop step of both kernels
    chunk: int  # keys per program (a multiple of block)
    n_chunks: int  # programs per row (chunks past T hold no valid tokens)
    sample: int  # sampled keys per row (the bracket)
    sample_run: int  # contiguous keys per sample position (one 32-byte sector of f32)
    nb: int  # thresholds per bracket (power of 2): nb - 1 buckets
    cap: int  # slots per (chunk, bucket)
    step: int  # key bits per radix-search iteration (1 or 2: 2**step - 1 scalar counts)
    guess_bits: int  # key bits the bracket resolves for f32 (bf16 keys have 16)
    warps: int  # num_warps of both kernels


def bucket_plan(r: int, t: int, k: int, **overrides) -> BucketPlan:
    """Sizes for R rows of T keys, K selected: about _TARGET_PROGRAMS programs per call.

    A bucket holds 1 / (nb - 1) of the bracket, which holds 2 (m + 1) / S of a row's n valid
    keys (m = the margin in sample ranks). Its density peaks at the largest q (1 - q) over the
    lengths n in (K, T] (1/4 if 2K <= T): `cap` covers 2x a chunk's share of one bucket at that
    density + 4 std + 8.
    """
    sample = min(overrides.pop("sample", 2048), next_power_of_2(t))
    nb = overrides.pop("nb", 16)
    block = min(overrides.pop("block", 512), next_power_of_2(t))
    chunk = max(block, next_power_of_2(cdiv(r * t, overrides.pop("programs", _TARGET_PROGRAMS))))
    chunk = min(chunk, max(block, next_power_of_2(t)))
    worst_qq = 0.25 if 2 * k <= t else (k / t) * (1 - k / t)
    band = 2 * (_SIGMAS * math.sqrt(sample * worst_qq) + _SLACK + 1) / sample
    per = band * chunk / (nb - 1)
    cap = min(next_power_of_2(int(2 * per + 4 * math.sqrt(per) + 8)), chunk)
    plan = BucketPlan(block=block, chunk=chunk, n_chunks=next_power_of_2(cdiv(t, chunk)),
                      sample=sample, sample_run=min(8, sample), nb=nb, cap=cap, step=1,
                      guess_bits=16, warps=8)
    return plan._replace(**overrides)


# ----------------------------------------------------------------------------- shared pieces


def _digit_search(count_ge, ks, nbits, low_bit: int, step: int):
    """Radix search for the k-th largest values, `step` (1 or 2) bits per iteration.

    count_ge(x): x uint32 scalar -> int32 scalar, the number of values u >= x (u are uint32
    offsets from a base; u = 0 never counts). ks: targets (int32 scalars >= 1); the search
    covers x < 2**nbits (nbits <= 32, may be traced) whose `low_bit` lowest bits are zero.
    Returns, for each k, the largest such x with >= k values u >= x (0 when there is none).
    Each count compares the values with one scalar: no broadcast to a larger tensor, whose
    layout conversion made the [2**step, ...] form ~10x slower on the H200.
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


def search_keys(keys, ks, base, nbits, low_bit: int, step: int):
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


def _pick(vec, i):
    """vec[i] of a register vector, i traced."""
    return jnp.sum(jnp.where(jnp.arange(vec.shape[0], dtype=jnp.int32) == i, vec, 0))


def _bits(span):
    """Key bits covering offsets [0, span) (span uint32)."""
    return jnp.where(span > 1, 32 - jax.lax.clz((span - 1).astype(jnp.int32)), 0)


class _Row(NamedTuple):
    length: jax.Array  # the row's length
    n: jax.Array  # its valid tokens min(length, T)
    c0: jax.Array  # this program's first token
    n_blocks: jax.Array  # blocks of this program's chunk holding valid tokens


def _row(len_ref, *, t, plan) -> _Row:
    length = len_ref[0, 0]
    n = jnp.minimum(length, t)
    c0 = pl.program_id(1) * plan.chunk
    n_blocks = jnp.clip((n - c0 + plan.block - 1) // plan.block, 0, plan.chunk // plan.block)
    return _Row(length, n, c0, n_blocks)


def _block_keys(s_ref, start, row: _Row, *, plan, keys_fn):
    """Keys [block] of tokens [start, start + block) (tokens >= n read as invalid)."""
    start = pl.multiple_of(start, plan.block)
    pos = start + jnp.arange(plan.block, dtype=jnp.int32)
    x = plgpu.load(s_ref.at[pl.ds(start, plan.block)], mask=pos < row.n, other=0)
    return pos, keys_fn(x, pos, row.length)


# ----------------------------------------------------------------------------- count kernel


def sample_positions(n, plan: BucketPlan):
    """Token positions [sample / run, run] of the bracket's sample of a row with n valid tokens:
    runs of `sample_run` contiguous tokens at evenly spaced starts (all tokens when n <= sample);
    positions >= n are not sampled."""
    nrun = plan.sample // plan.sample_run
    c = jnp.arange(nrun, dtype=jnp.int32)[:, None]
    j = jnp.arange(plan.sample_run, dtype=jnp.int32)[None, :]
    start = c * (n // nrun) + (c * (n % nrun)) // nrun  # evenly spaced; no int32 overflow
    return jnp.where(n > plan.sample, start - start % plan.sample_run + j, c * plan.sample_run + j)


def _bracket(s_ref, row: _Row, *, k, plan, low_bit, keys_fn):
    """The row's bracket (lo, hi) from a stratified sample over its valid tokens [0, n)."""
    n = row.n
    pos = sample_positions(n, plan)
    inside = pos < n
    pos = jnp.where(inside, pos, 0)
    x = plgpu.load(s_ref.at[pos], mask=inside, other=0)
    key = jnp.where(inside, keys_fn(x, pos, row.length), INVALID_KEY)
    s_valid = jnp.sum(jnp.sum(inside.astype(jnp.int32), axis=1))
    sf = s_valid.astype(jnp.float32)
    q = k / jnp.maximum(n, 1).astype(jnp.float32)
    margin = _SIGMAS * jnp.sqrt(sf * q * jnp.maximum(1.0 - q, 0.0)) + _SLACK
    r_hi = jnp.floor(q * sf - margin).astype(jnp.int32)
    r_lo = jnp.ceil(q * sf + margin).astype(jnp.int32)
    v_hi, v_lo = search_keys(key, (jnp.maximum(r_hi, 1), jnp.clip(r_lo, 1, s_valid)),
                             INVALID_KEY, 32, low_bit, plan.step)
    hi = jnp.where((r_hi < 1) | (v_hi >= FORCED_KEY), _HI_ALL, v_hi + (1 << low_bit))
    lo = jnp.where(r_lo > s_valid, _MIN_SCORE_KEY, v_lo)
    trivial = n <= k  # everything valid is taken: every valid key counts as >= hi
    return jnp.where(trivial, _MIN_SCORE_KEY, lo), jnp.where(trivial, _MIN_SCORE_KEY, hi)


def _thresholds(lo, hi, nb: int, low_bit: int):
    """nb ascending thresholds [nb] int32: lo, lo + step, ..., hi (step a multiple of 2**low_bit,
    clamped at hi)."""
    span = jax.lax.bitcast_convert_type(hi - lo, jnp.uint32)
    align = np.uint32(1 << low_bit)
    step = ((span + np.uint32(nb - 2)) // np.uint32(nb - 1) + align - 1) // align * align
    m = jnp.arange(nb, dtype=jnp.uint32)
    off = jnp.where(m <= span // jnp.maximum(step, 1), m * step, span)
    off = jnp.where(m == nb - 1, span, off)
    return lo + jax.lax.bitcast_convert_type(off, jnp.int32)


def _count_kernel(s_ref, len_ref, th_ref, ge_ref, cand_ref, *, t, k, plan, guess_low_bit, low_bit,
                  keys_fn):
    """One (row, chunk): th_ref [nb] the row's thresholds; ge_ref [nb] = #keys >= th[m] in the
    chunk; cand_ref [nb * cap]: the chunk's keys of bucket m in slots [m cap, (m + 1) cap)."""
    row = _row(len_ref, t=t, plan=plan)
    nb, cap = plan.nb, plan.cap
    lo, hi = _bracket(s_ref, row, k=k, plan=plan, low_bit=guess_low_bit, keys_fn=keys_fn)
    th = _thresholds(lo, hi, nb, low_bit)
    th_ref[...] = th  # every program of the row writes the same values
    m = jnp.arange(nb, dtype=jnp.int32)[:, None]

    def body(b, carry):
        ge, fill = carry
        _, key = _block_keys(s_ref, row.c0 + b * plan.block, row, plan=plan, keys_fn=keys_fn)
        above = (key[None, :] >= th[:, None]).astype(jnp.int32)  # [nb, block]
        bucket = jnp.sum(above, axis=0) - 1  # -1 below lo, nb - 1 at or above hi
        onehot = ((bucket[None, :] == m) & (m < nb - 1)).astype(jnp.int32)
        rank = jnp.cumsum(onehot, axis=1) + fill[:, None] - 1
        slot = jnp.sum(onehot * rank, axis=0)
        keep = (bucket >= 0) & (bucket < nb - 1) & (slot < cap)
        # Dropped lanes aim past the block: never stored on the GPU, dropped by the interpreter.
        plgpu.store(cand_ref.at[jnp.where(keep, bucket * cap + slot, nb * cap)], key, mask=keep)
        return ge + jnp.sum(above, axis=1), fill + jnp.sum(onehot, axis=1)

    zeros = jnp.zeros((nb,), jnp.int32)
    ge, _ = jax.lax.fori_loop(0, row.n_blocks, body, (zeros, zeros))
    ge_ref[...] = ge


# ----------------------------------------------------------------------------- emit kernel


def _row_count(s_ref, row: _Row, base, top, *, plan, keys_fn):
    """count_ge of `_digit_search` streamed over the row's valid keys in [base, top)."""
    n_row = (row.n + plan.block - 1) // plan.block

    def count(x):
        def body(b, acc):
            _, key = _block_keys(s_ref, b * plan.block, row, plan=plan, keys_fn=keys_fn)
            return acc + jnp.sum((_offsets(key, base, top) >= x).astype(jnp.int32))
        return jax.lax.fori_loop(0, n_row, body, jnp.int32(0))

    return count


def _sum_before(vec, c):
    """sum(vec[:c]) of a register vector, c traced."""
    return jnp.sum(jnp.where(jnp.arange(vec.shape[0], dtype=jnp.int32) < c, vec, 0))


def _emit_kernel(s_ref, len_ref, th_ref, ge_ref, cand_ref, o_ref, fast_ref, *, t, k, plan,
                 low_bit, keys_fn):
    """One (row, chunk): th and this chunk's offsets, then its taken indices -> o_ref [K];
    fast_ref [1, 1]: 1 where the row took the fast path (every program writes the same)."""
    row = _row(len_ref, t=t, plan=plan)
    nb, cap, nc = plan.nb, plan.cap, plan.n_chunks
    c = pl.program_id(1)
    th = th_ref[...]  # [nb]
    ge = ge_ref[...]  # [C, nb]
    tot = jnp.sum(ge, axis=0)
    trivial = row.n <= k
    j = jnp.sum((tot >= k).astype(jnp.int32)) - 1
    bracket = (j >= 0) & (j <= nb - 2)
    j = jnp.clip(j, 0, nb - 2)
    base, top = _pick(th, j), _pick(th, j + 1)
    mcol = jnp.arange(nb, dtype=jnp.int32)[None, :]
    ge_top = jnp.sum(jnp.where(mcol == j + 1, ge, 0), axis=1)  # [C] keys >= top
    in_j = jnp.sum(jnp.where(mcol == j, ge, 0), axis=1) - ge_top  # [C] keys in bucket j
    ge_hi = jnp.sum(jnp.where(mcol == nb - 1, ge, 0), axis=1)  # [C] keys >= hi
    need = k - jnp.sum(ge_top)
    span = jax.lax.bitcast_convert_type(top - base, jnp.uint32)
    single = span <= np.uint32(1 << low_bit)  # one key value: every key of bucket j is a tie
    fast = trivial | (bracket & (single | (jnp.max(in_j) <= cap)))
    fast_ref[...] = jnp.full((1, 1), fast.astype(jnp.int32))

    # Fast path: bucket j's keys of every chunk, [C, cap] register lanes.
    ci = jnp.arange(nc, dtype=jnp.int32)[:, None]
    si = jnp.arange(cap, dtype=jnp.int32)[None, :]
    held = si < jnp.minimum(in_j, cap)[:, None]
    lanes = plgpu.load(cand_ref.at[(ci * nb + j) * cap + si], mask=held, other=INVALID_KEY)
    nbits = jnp.where(trivial | single, low_bit, _bits(span))
    (th_fast,) = search_keys(jnp.where(held, lanes, INVALID_KEY), (jnp.maximum(need, 1),), base,
                             nbits, low_bit, plan.step)
    gt = jnp.where(single, 0, jnp.sum((held & (lanes > th_fast)).astype(jnp.int32), axis=1))
    eq = jnp.where(single, in_j, jnp.sum((held & (lanes == th_fast)).astype(jnp.int32), axis=1))
    above = jnp.where(trivial, ge_hi, ge_top + gt)  # [C] keys > th
    eq = jnp.where(trivial, 0, eq)
    ties_fast = jnp.where(trivial, 0, need - jnp.sum(gt))
    taken = above + jnp.clip(ties_fast - (jnp.cumsum(eq) - eq), 0, eq)
    slot_fast, tie_fast = _sum_before(taken, c), _sum_before(eq, c)

    # Slow path (this row only): the same search streamed over the row, then one counting pass.
    slow = ~fast
    s_base = jnp.where(bracket, base, INVALID_KEY)
    s_top = jnp.where(bracket, top, _HI_ALL)
    s_bits = jnp.where(slow, jnp.where(bracket, _bits(span), 32), low_bit)
    (xs,) = _digit_search(_row_count(s_ref, row, s_base, s_top, plan=plan, keys_fn=keys_fn),
                          (jnp.where(bracket, need, k),), s_bits, low_bit, plan.step)
    th_slow = s_base + jax.lax.bitcast_convert_type(xs, jnp.int32)

    def stats(b, acc):
        pos, key = _block_keys(s_ref, b * plan.block, row, plan=plan, keys_fn=keys_fn)
        gt_b = (key > th_slow).astype(jnp.int32)
        eq_b = ((key == th_slow) & (pos < row.c0)).astype(jnp.int32)
        return acc[0] + jnp.sum(gt_b), acc[1] + jnp.sum(gt_b * (pos < row.c0)), acc[2] + jnp.sum(eq_b)

    n_stats = jnp.where(slow, (row.n + plan.block - 1) // plan.block, 0)
    gt_all, gt_before, eq_before = jax.lax.fori_loop(0, n_stats, stats, (jnp.int32(0),) * 3)
    ties_slow = k - gt_all

    th_row = jnp.where(trivial, INVALID_KEY, jnp.where(fast, th_fast, th_slow))
    ties = jnp.where(fast, ties_fast, ties_slow)
    slot0 = jnp.where(fast, slot_fast, gt_before + jnp.clip(ties_slow, 0, eq_before))
    tie0 = jnp.where(fast, tie_fast, eq_before)

    def emit(b, carry):
        slot_b, tie_b = carry
        pos, key = _block_keys(s_ref, row.c0 + b * plan.block, row, plan=plan, keys_fn=keys_fn)
        tie = ((key == th_row) & (key != INVALID_KEY)).astype(jnp.int32)
        take = (key > th_row) | ((tie > 0) & (tie_b + jnp.cumsum(tie) <= ties))
        slot = slot_b + jnp.cumsum(take.astype(jnp.int32)) - 1
        keep = take & (slot < k)
        # Dropped lanes aim past the block: never stored on the GPU, dropped by the interpreter.
        plgpu.store(o_ref.at[jnp.where(keep, slot, k)], pos, mask=keep)
        return slot_b + jnp.sum(take.astype(jnp.int32)), tie_b + jnp.sum(tie)

    jax.lax.fori_loop(0, row.n_blocks, emit, (slot0, tie0))

    total = jnp.where(trivial, jnp.sum(ge_hi), k)

    def zero(i, carry):  # the row's last program clears the slots past the row's count
        slot = total + i * plan.block + jnp.arange(plan.block, dtype=jnp.int32)
        keep = slot < k
        plgpu.store(o_ref.at[jnp.where(keep, slot, k)], jnp.zeros_like(slot), mask=keep)
        return carry

    n_zero = jnp.where(c == nc - 1, (k - total + plan.block - 1) // plan.block, 0)
    jax.lax.fori_loop(0, n_zero, zero, jnp.int32(0))


# ----------------------------------------------------------------------------- wrapper


def bucket_select(scores: jax.Array, k: int, lengths: jax.Array | None = None, *,
                  n_sink: int = 0, n_recent: int = 0, interpret: bool = False,
                  plan: BucketPlan | None = None) -> tuple[jax.Array, jax.Array]:
    """Exact top-K per row by the two kernels above (`topk_select`'s Pallas path calls this).

    scores [R, T] f32/bf16, lengths [R] int32 or None (= T), sinks / window as in
    `kernels.topk_select.topk_select`; plan: sizes (`bucket_plan(R, T, K, **overrides)`).
    -> (indices [R, K] int32 ascending, valid [R, K] bool; slots past the count are 0 / False).
    """
    lengths = check_select_args(scores, k, lengths, n_sink, n_recent)
    idx, valid, _ = bucket_select_paths(scores, lengths, k, n_sink, n_recent, interpret,
                                        plan or bucket_plan(*scores.shape, k))
    return idx, valid


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def bucket_select_paths(scores, lengths, k, n_sink, n_recent, interpret, plan):
    """`bucket_select` on checked arguments (lengths [R] int32, plan given), and which rows took
    the fast path. -> (indices [R, K], valid [R, K], fast [R] bool)."""
    keys_fn = functools.partial(select_keys, n_sink=n_sink, n_recent=n_recent)
    r, t = scores.shape
    bf16 = scores.dtype == jnp.bfloat16
    low_bit = 16 if bf16 else 0  # bf16 keys have zero low halves
    guess_low_bit = 16 if bf16 else 32 - plan.guess_bits
    nb, cap, nc = plan.nb, plan.cap, plan.n_chunks
    row_spec = pl.BlockSpec((None, t), lambda i, c: (i, 0))
    len_spec = pl.BlockSpec((1, 1), lambda i, c: (i, 0))
    th_spec = pl.BlockSpec((None, nb), lambda i, c: (i, 0))
    params = plgpu.CompilerParams(num_warps=plan.warps, num_stages=2)
    lengths2 = lengths[:, None]
    th, ge, cand = pl.pallas_call(
        functools.partial(_count_kernel, t=t, k=k, plan=plan, guess_low_bit=guess_low_bit,
                          low_bit=low_bit, keys_fn=keys_fn),
        grid=(r, nc),
        in_specs=[row_spec, len_spec],
        out_specs=[th_spec, pl.BlockSpec((None, None, nb), lambda i, c: (i, c, 0)),
                   pl.BlockSpec((None, nb * cap), lambda i, c: (i, c))],
        out_shape=[jax.ShapeDtypeStruct((r, nb), jnp.int32),
                   jax.ShapeDtypeStruct((r, nc, nb), jnp.int32),
                   jax.ShapeDtypeStruct((r, nc * nb * cap), jnp.int32)],
        compiler_params=params, interpret=interpret, name="topk_bucket_count",
    )(scores, lengths2)
    out, fast = pl.pallas_call(
        functools.partial(_emit_kernel, t=t, k=k, plan=plan, low_bit=low_bit, keys_fn=keys_fn),
        grid=(r, nc),
        in_specs=[row_spec, len_spec, th_spec,
                  pl.BlockSpec((None, nc, nb), lambda i, c: (i, 0, 0)),
                  pl.BlockSpec((None, nc * nb * cap), lambda i, c: (i, 0))],
        out_specs=[pl.BlockSpec((None, k), lambda i, c: (i, 0)), len_spec],
        out_shape=[jax.ShapeDtypeStruct((r, k), jnp.int32),
                   jax.ShapeDtypeStruct((r, 1), jnp.int32)],
        compiler_params=params, interpret=interpret, name="topk_bucket_emit",
    )(scores, lengths2, th, ge, cand)
    count = jnp.minimum(jnp.minimum(lengths, t), k)
    return out, jnp.arange(k, dtype=jnp.int32)[None, :] < count[:, None], fast[:, 0] != 0
