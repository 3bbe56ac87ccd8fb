"""Sparse decode attention over gathered token indices (flash-decoding, Pallas Triton).

One decode query per head attends only the cache rows named by `indices`. The kernel runs one
program per (batch, selection head, split): it loads the split's block of indices, gathers those
K/V rows with pointer gathers, and keeps an fp32 online softmax; a second small Pallas kernel
(`combine_splits`) merges the splits in one launch. With per-KV-head selection (Hsel == Hkv) the
G query heads of a group are the rows of one dot, so each selected K/V row is read once per group.

Backend: Pallas with the Triton lowering (`jax.experimental.pallas.triton`).
- A token gather is a vector of row pointers, which Triton expresses directly (`ref[idx_vector]`);
  Mosaic GPU's row gather (TMA gather4) needs Blackwell, so on Hopper it has no equivalent.
- Pallas Triton runs unchanged on jax 0.10 (CI, `interpret=True` on CPU) and jax 0.11/0.12 (the
  GPU image), where it is deprecated but still lowers; `jax_triton` would add a dependency and
  has no CPU interpreter.
- To move it: the kernel body uses only `ref[...]` loads, `plgpu.dot` and `plgpu.load` masks; a
  jax_triton port rewrites `_sparse_kernel` alone, the wrapper and reference stay.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from butler_jax.kernels._common import (attention_options, cdiv, check_qkv, combine_splits,
                             load_query, next_power_of_2, online_softmax_step, reference_lse,
                             resolve_implementation, softmax_init, split_lse, store_partials)

_MIN_DOT_ROWS = 16  # Triton dot tiles need at least 16 rows; query rows are padded (masked).
_TARGET_PROGRAMS = 256  # default split count aims at about this many programs (132 SMs).
_TUNING = {"block_k": 128, "num_splits": None, "num_warps": 4, "num_stages": 2}


def _check_inputs(q, k_cache, v_cache, indices, valid) -> None:
    """Raise ValueError naming the offending argument when shapes or dtypes disagree."""
    check_qkv(q, k_cache, v_cache)
    b, hq, hkv = q.shape[0], q.shape[1], k_cache.shape[1]
    if indices.ndim != 3 or indices.shape[:2] not in ((b, hkv), (b, hq)):
        raise ValueError(
            f"indices must be [B, Hsel, K] with Hsel = Hkv ({hkv}) or Hq ({hq}), got {indices.shape}"
        )
    if indices.dtype != jnp.int32:
        raise ValueError(f"indices must be int32, got {indices.dtype}")
    if valid.shape != indices.shape or valid.dtype != jnp.bool_:
        raise ValueError(
            f"valid must be bool with the shape of indices {indices.shape}, got {valid.dtype}{valid.shape}"
        )


def sparse_decode_attention_reference(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    indices: jax.Array,
    valid: jax.Array,
    *,
    scale: float | None = None,
    return_lse: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Pure-JAX sparse decode attention: gather, fp32 masked softmax. Same contract as the kernel.

    q: [B, Hq, D]; k_cache, v_cache: [B, Hkv, T, D]; indices, valid: [B, Hsel, K] with
    Hsel in (Hkv, Hq). Returns [B, Hq, D] in q.dtype; all-invalid rows give 0 (and with
    `return_lse` the log-sum-exp [B, Hq] fp32 of the valid slots' scaled logits, -inf if none).
    """
    _check_inputs(q, k_cache, v_cache, indices, valid)
    b, hq, d = q.shape
    hkv, t = k_cache.shape[1], k_cache.shape[2]
    hsel = indices.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    rows = jnp.clip(indices, 0, t - 1)
    bi = jnp.arange(b)[:, None, None]
    hi = (jnp.arange(hsel) // (hsel // hkv))[None, :, None]
    k = k_cache[bi, hi, rows].astype(jnp.float32)  # [B, Hsel, K, D]
    v = v_cache[bi, hi, rows].astype(jnp.float32)
    qr = q.reshape(b, hsel, hq // hsel, d).astype(jnp.float32)
    hp = jax.lax.Precision.HIGHEST
    s = jnp.einsum("bhrd,bhkd->bhrk", qr, k, precision=hp) * scale
    s = jnp.where(valid[:, :, None, :], s, -jnp.inf)
    m = s.max(axis=-1, keepdims=True)
    p = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0))
    l = p.sum(axis=-1, keepdims=True)
    o = jnp.einsum("bhrk,bhkd->bhrd", p, v, precision=hp) / jnp.where(l > 0, l, 1.0)
    o = o.reshape(b, hq, d).astype(q.dtype)
    return (o, reference_lse(s).reshape(b, hq)) if return_lse else o


def _sparse_kernel(q_ref, k_ref, v_ref, idx_ref, valid_ref, o_ref, m_ref, l_ref, *, rows, block_k,
                   n_slots, scale):
    """One (batch, selection head, split) program.

    q_ref: [Rp, D] (rows >= `rows` are padding); k_ref, v_ref: [T, D]; idx_ref, valid_ref: [Ks]
    this split's slots, of which those at global position >= n_slots are past the end of the
    selection; o_ref: [Rp, D], m_ref, l_ref: [Rp] (only the first `rows` are stored).
    Block i + 1's indices are loaded before block i's K/V gather (they ride in the loop carry),
    so the index load of the next block overlaps the gather of this one.
    """
    rp, d = q_ref.shape
    t, per_split = k_ref.shape[0], idx_ref.shape[0]
    q = load_query(q_ref, rows, k_ref.dtype)
    first = pl.program_id(2) * per_split
    n_blocks = per_split // block_k
    if n_slots % per_split:
        n_blocks = jnp.minimum(per_split, n_slots - first + block_k - 1) // block_k

    def load_slots(i):
        """Block i's (row numbers clamped to the cache, validity); slots past the selection are invalid."""
        tile = pl.ds(i * block_k, block_k)
        if n_slots % per_split:  # the last split is ragged: mask slots past the selection
            inside = first + i * block_k + jnp.arange(block_k) < n_slots
            idx = plgpu.load(idx_ref.at[tile], mask=inside, other=0)
            ok = plgpu.load(valid_ref.at[tile], mask=inside, other=False) & inside
        else:
            idx, ok = idx_ref[tile], valid_ref[tile]
        return jnp.clip(idx, 0, t - 1), ok

    def body(i, carry):
        *softmax, slot, ok = carry
        upcoming = load_slots(jnp.minimum(i + 1, n_blocks - 1))  # the last block loads itself again
        softmax = online_softmax_step(q, k_ref[slot, :], v_ref[slot, :], ok, tuple(softmax), scale)
        return (*softmax, *upcoming)

    init = (*softmax_init(rp, d), *load_slots(0))
    o, m, l, _, _ = jax.lax.fori_loop(0, n_blocks, body, init)
    store_partials(o_ref, m_ref, l_ref, (o, m, l), rows)


def _default_splits(n_programs: int, n_blocks: int) -> int:
    """Split count so that about _TARGET_PROGRAMS programs run, at most one per index block."""
    return max(1, min(n_blocks, next_power_of_2(cdiv(_TARGET_PROGRAMS, n_programs))))


def _sparse_pallas(q, k_cache, v_cache, indices, valid, *, scale, interpret, return_lse, block_k,
                   num_splits, num_warps, num_stages):
    b, hq, d = q.shape
    hkv, t = k_cache.shape[1], k_cache.shape[2]
    hsel, k = indices.shape[1], indices.shape[2]
    rows, heads_per_kv = hq // hsel, hsel // hkv
    rp = max(_MIN_DOT_ROWS, next_power_of_2(rows))
    n_blocks = cdiv(k, block_k)
    splits = num_splits or _default_splits(b * hsel, n_blocks)
    per_split = cdiv(n_blocks, min(splits, n_blocks)) * block_k
    splits = cdiv(k, per_split)
    kernel = functools.partial(_sparse_kernel, rows=rows, block_k=block_k, n_slots=k, scale=scale)
    slot_spec = pl.BlockSpec((None, None, per_split), lambda bi, h, s: (bi, h, s))
    cache_spec = pl.BlockSpec((None, None, t, d), lambda bi, h, s: (bi, h // heads_per_kv, 0, 0))
    f32 = jnp.float32
    o, m, l = pl.pallas_call(
        kernel,
        grid=(b, hsel, splits),
        in_specs=[
            pl.BlockSpec((None, None, rp, d), lambda bi, h, s: (bi, h, 0, 0)),
            cache_spec,
            cache_spec,
            slot_spec,
            slot_spec,
        ],
        out_specs=[
            pl.BlockSpec((None, None, None, rp, d), lambda bi, h, s: (bi, h, s, 0, 0)),
            pl.BlockSpec((None, None, None, rp), lambda bi, h, s: (bi, h, s, 0)),
            pl.BlockSpec((None, None, None, rp), lambda bi, h, s: (bi, h, s, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((b, hsel, splits, rows, d), f32),
            jax.ShapeDtypeStruct((b, hsel, splits, rows), f32),
            jax.ShapeDtypeStruct((b, hsel, splits, rows), f32),
        ],
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="sparse_decode_attention",
    )(q.reshape(b, hsel, rows, d), k_cache, v_cache, indices, valid)
    out = combine_splits(o, m, l, q.dtype, interpret).reshape(b, hq, d)
    return (out, split_lse(m, l)) if return_lse else out


def sparse_decode_attention(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    indices: jax.Array,
    valid: jax.Array,
    *,
    scale: float | None = None,
    implementation: str = "auto",
    interpret: bool = False,
    return_lse: bool = False,
    **tuning,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Decode attention of q over the selected cache rows.

    q: [B, Hq, D]; k_cache, v_cache: [B, Hkv, T, D] (bf16/f16/f32, same dtype), Hq = G * Hkv;
    indices: [B, Hsel, K] int32 token positions in [0, T) (clamped), Hsel = Hkv (all G query
    heads of a group share the selection) or Hq (per query head); valid: [B, Hsel, K] bool.
    Returns [B, Hq, D] in q.dtype, fp32 accumulation; rows with no valid slot are 0.
    scale defaults to 1/sqrt(D). implementation: "pallas" | "xla" | "auto" (Pallas on GPU).
    tuning (Pallas only): block_k (indices per step, power of 2 >= 16), num_splits (split-K
    count, default aims at ~256 programs), num_warps, num_stages.
    return_lse: also return the log-sum-exp of the valid slots' scaled logits [B, Hq] fp32 (-inf
    for rows with no valid slot), so partial results over disjoint token sets can be merged.
    """
    _check_inputs(q, k_cache, v_cache, indices, valid)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if resolve_implementation(implementation, interpret) == "xla":
        return sparse_decode_attention_reference(q, k_cache, v_cache, indices, valid, scale=scale,
                                                 return_lse=return_lse)
    opts = attention_options(_TUNING, tuning, q.shape[-1])
    return _sparse_pallas(q, k_cache, v_cache, indices, valid, scale=scale, interpret=interpret,
                          return_lse=return_lse, **opts)
