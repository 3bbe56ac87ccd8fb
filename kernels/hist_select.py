"""Exact per-row top-K by a 256-way radix select whose digit histograms are tensor-core dots.

Same keys and semantics as `kernels.topk_select` (order-preserving int32 keys, forced tokens at
FORCED_KEY, tokens >= length at INVALID_KEY; the K largest keys, ties to the lower index, INVALID
never taken; output in ascending token order). Each row is split into P segments (one program
per (row, segment) in every kernel), and the key's unsigned bits are resolved 8 at a time:

1. Level kernels (f32: 4, bf16: 2, whose keys have 16 significant bits), grid (R, P): a program
   first merges the previous levels' per-segment histograms of its row ([P, 256] each, tiny)
   into the prefix p of the K-th largest key and the rank left inside it (`_resolve`; no XLA
   glue between kernels), then reads its segment and writes the 256-bin histogram of the next
   digit of the keys that share p. The histogram is one int8 dot per block of keys:
   onehot(high nibble)^T [16, N] @ onehot(low nibble) [N, 16] -> counts [16, 16] (int32
   accumulation, exact).
2. Emit kernel, grid (R, P): resolves the threshold th from all levels' histograms; each
   segment's keys > th and ties == th follow from its own histograms (no counting pass), so the
   program knows its first output slot and the ties before it, reads its segment once more and
   scatters the taken token indices (in-block cumsum). The last segment's program zeroes the
   slots past the row's count.

Reads of the scores: levels + 1 (the reads after the first hit L2 for the sizes of decode).
Rows of n = min(length, T) <= K valid tokens take every valid token (the level kernels past the
first skip them). Always exact: no bracket, no fallback.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from butler_jax.kernels._common import cdiv, next_power_of_2
from butler_jax.kernels.select_keys import check_select_args, select_keys

_INT32_MIN = np.int32(np.iinfo(np.int32).min)
_BITS = 8  # key bits per level
_BINS = 1 << _BITS
_NIB = 1 << (_BITS // 2)
_TARGET_PROGRAMS = 256  # programs per call the segment count aims at (132 SMs)


class HistPlan(NamedTuple):
    """Static sizes of the histogram select."""
    block: int  # keys per loop step (one histogram dot)
    seg: int  # keys per segment (one program)
    n_seg: int  # segments per row (power of 2; trailing ones may lie past T)
    warps: int  # num_warps of every kernel
    onehot: str  # dtype of the one-hot dot operands: "int8" or "bfloat16"


def hist_plan(r: int, t: int, **overrides) -> HistPlan:
    """Sizes for R rows of T keys: about _TARGET_PROGRAMS programs, blocks of <= 1024 keys."""
    block = min(overrides.pop("block", 1024), next_power_of_2(t))
    want = max(1, cdiv(overrides.pop("programs", _TARGET_PROGRAMS), r))
    seg = block * max(1, cdiv(t, block * want))
    n_seg = next_power_of_2(cdiv(t, seg))
    return HistPlan(block=block, seg=seg, n_seg=n_seg, warps=4, onehot="int8")._replace(
        **overrides)


def _resolve(hist_refs, k):
    """Merge the per-level histograms of one row into the K-th largest key's digits.

    hist_refs: refs [P, 256] int32, one per level (level l counts the keys of each segment that
    share the first l digits found), loaded one at a time (registers). Needs >= k keys in
    level 0. -> (prefix int32 of the digits, rank left inside it = ties to take at the last
    level, per segment [P] the keys above the prefix's range, per segment the keys in its
    last bin).
    """
    k_rem = jnp.int32(k)
    prefix = jnp.int32(0)
    d = jnp.arange(_BINS, dtype=jnp.int32)[None, :]
    above = eq = None
    for ref in hist_refs:
        h = ref[...]
        tot = jnp.sum(h, axis=0)  # [256]
        at_or_above = jnp.sum(tot) - jnp.cumsum(tot) + tot  # keys with digit >= d
        hit = at_or_above >= k_rem
        digit = jnp.sum(hit.astype(jnp.int32)) - 1
        k_rem = k_rem - jnp.sum(jnp.where(hit, 0, tot))
        prefix = (prefix << _BITS) | digit
        seg_above = jnp.sum(jnp.where(d > digit, h, 0), axis=1)
        above = seg_above if above is None else above + seg_above
        eq = jnp.sum(jnp.where(d == digit, h, 0), axis=1)
    return prefix, k_rem, above, eq


def _row_segment(len_ref, *, t, plan):
    seg0 = pl.program_id(1) * plan.seg
    length = len_ref[0, 0]
    n = jnp.minimum(length, t)
    n_blocks = jnp.clip((n - seg0 + plan.block - 1) // plan.block, 0, plan.seg // plan.block)
    return seg0, length, n, n_blocks


def _load_keys(s_ref, start, length, n, *, plan, keys_fn):
    pos = start + jnp.arange(plan.block, dtype=jnp.int32)
    x = plgpu.load(s_ref.at[pl.ds(start, plan.block)], mask=pos < n, other=0)
    return pos, keys_fn(x, pos, length)


def _level_kernel(s_ref, len_ref, *refs, t, k, plan, level, keys_fn):
    """One (row, segment): histogram [16, 16] of digit `level` of the keys sharing the prefix."""
    prev, h_ref = refs[:level], refs[level]
    seg0, length, n, n_blocks = _row_segment(len_ref, t=t, plan=plan)
    prefix = _resolve(prev, k)[0] if level else None
    if level:
        n_blocks = jnp.where(n <= k, 0, n_blocks)  # such rows take every valid token
    shift = 32 - _BITS * (level + 1)
    nib = jnp.arange(_NIB, dtype=jnp.int32)[None, :]
    dt = jnp.int8 if plan.onehot == "int8" else jnp.bfloat16

    def body(b, acc):
        start = pl.multiple_of(seg0 + b * plan.block, plan.block)
        pos, key = _load_keys(s_ref, start, length, n, plan=plan, keys_fn=keys_fn)
        u = key ^ _INT32_MIN  # unsigned order of the keys, as int32 bits
        d = jax.lax.shift_right_logical(u, shift) & (_BINS - 1)
        m = pos < n
        if level:
            m = m & (jax.lax.shift_right_logical(u, shift + _BITS) == prefix)
        hi = ((d >> (_BITS // 2))[:, None] == nib) & m[:, None]
        lo = (d & (_NIB - 1))[:, None] == nib
        h = plgpu.dot(hi.astype(dt), lo.astype(dt), trans_a=True)
        return acc + h.astype(jnp.int32)

    acc = jax.lax.fori_loop(0, n_blocks, body, jnp.zeros((_NIB, _NIB), jnp.int32))
    h_ref[...] = acc


def _emit_kernel(s_ref, len_ref, *refs, t, k, plan, levels, keys_fn):
    """One (row, segment): scatter the taken token indices into their slots of o_ref [K]."""
    hist_refs, o_ref = refs[:levels], refs[levels]
    seg0, length, n, n_blocks = _row_segment(len_ref, t=t, plan=plan)
    prefix, need, gt, eq = _resolve(hist_refs, k)
    trivial = n <= k
    # Rows with n <= K: th = INVALID (every valid key is above it), no ties.
    gt = jnp.where(trivial, jnp.sum(hist_refs[0][...], axis=1), gt)
    eq = jnp.where(trivial, 0, eq)
    need = jnp.where(trivial, 0, need)
    th = jnp.where(trivial, _INT32_MIN, (prefix << (32 - _BITS * levels)) ^ _INT32_MIN)
    ties_before = jnp.cumsum(eq) - eq
    taken = gt + jnp.clip(need - ties_before, 0, eq)
    first = jnp.cumsum(taken) - taken
    s = pl.program_id(1)
    mine = jnp.arange(plan.n_seg, dtype=jnp.int32) == s
    slot0 = jnp.sum(jnp.where(mine, first, 0))
    tie0 = jnp.sum(jnp.where(mine, ties_before, 0))
    total = jnp.sum(taken)

    def body(b, carry):
        slot_b, tie_b = carry
        start = pl.multiple_of(seg0 + b * plan.block, plan.block)
        pos, key = _load_keys(s_ref, start, length, n, plan=plan, keys_fn=keys_fn)
        ok = pos < n
        tie = ((key == th) & ok & (key != _INT32_MIN)).astype(jnp.int32)
        take = ((key > th) & ok) | ((tie > 0) & (tie_b + jnp.cumsum(tie) <= need))
        slot = slot_b + jnp.cumsum(take.astype(jnp.int32)) - 1
        keep = take & (slot < k)
        # Dropped lanes aim past the block: never stored on the GPU, dropped by the interpreter.
        plgpu.store(o_ref.at[jnp.where(keep, slot, k)], pos, mask=keep)
        return slot_b + jnp.sum(take.astype(jnp.int32)), tie_b + jnp.sum(tie)

    jax.lax.fori_loop(0, n_blocks, body, (slot0, tie0))

    def zero(j, carry):  # the last segment's program clears the slots past the row's count
        slot = total + j * plan.block + jnp.arange(plan.block, dtype=jnp.int32)
        keep = slot < k
        plgpu.store(o_ref.at[jnp.where(keep, slot, k)], jnp.zeros_like(slot), mask=keep)
        return carry

    n_zero = jnp.where(s == plan.n_seg - 1, (k - total + plan.block - 1) // plan.block, 0)
    jax.lax.fori_loop(0, n_zero, zero, jnp.int32(0))


def hist_select(scores: jax.Array, k: int, lengths: jax.Array | None = None, *, n_sink: int = 0,
                n_recent: int = 0, interpret: bool = False,
                plan: HistPlan | None = None) -> tuple[jax.Array, jax.Array]:
    """Exact top-K per row (the Pallas kernels above; `topk_select(method="hist")` calls this).

    scores [R, T] f32/bf16, lengths [R] int32 or None (= T), sinks / window as in
    `kernels.topk_select.topk_select`; plan: sizes (`hist_plan(R, T, **overrides)`).
    -> (indices [R, K] int32 ascending, valid [R, K] bool; slots past the count are 0 / False).
    """
    lengths = check_select_args(scores, k, lengths, n_sink, n_recent)
    return _hist_select(scores, lengths, k, n_sink, n_recent, interpret,
                        plan or hist_plan(*scores.shape))


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _hist_select(scores, lengths, k, n_sink, n_recent, interpret, plan):
    keys_fn = functools.partial(select_keys, n_sink=n_sink, n_recent=n_recent)
    r, t = scores.shape
    levels = 2 if scores.dtype == jnp.bfloat16 else 4
    ns = plan.n_seg
    row_spec = pl.BlockSpec((None, t), lambda i, s: (i, 0))
    len_spec = pl.BlockSpec((1, 1), lambda i, s: (i, 0))
    hist_in = pl.BlockSpec((None, ns, _BINS), lambda i, s: (i, 0, 0))
    params = plgpu.CompilerParams(num_warps=plan.warps, num_stages=2)
    lengths2 = lengths[:, None]
    hists = []
    for level in range(levels):
        h = pl.pallas_call(
            functools.partial(_level_kernel, t=t, k=k, plan=plan, level=level, keys_fn=keys_fn),
            grid=(r, ns),
            in_specs=[row_spec, len_spec] + [hist_in] * level,
            out_specs=pl.BlockSpec((None, None, _NIB, _NIB), lambda i, s: (i, s, 0, 0)),
            out_shape=jax.ShapeDtypeStruct((r, ns, _NIB, _NIB), jnp.int32),
            compiler_params=params, interpret=interpret, name=f"topk_hist{level}",
        )(scores, lengths2, *hists)
        hists.append(h.reshape(r, ns, _BINS))
    out = pl.pallas_call(
        functools.partial(_emit_kernel, t=t, k=k, plan=plan, levels=levels, keys_fn=keys_fn),
        grid=(r, ns),
        in_specs=[row_spec, len_spec] + [hist_in] * levels,
        out_specs=pl.BlockSpec((None, k), lambda i, s: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((r, k), jnp.int32),
        compiler_params=params, interpret=interpret, name="topk_hist_emit",
    )(scores, lengths2, *hists)
    count = jnp.minimum(jnp.minimum(lengths, t), k)
    return out, jnp.arange(k, dtype=jnp.int32)[None, :] < count[:, None]
