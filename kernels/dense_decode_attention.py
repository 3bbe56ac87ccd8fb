"""Dense decode attention over a length-masked KV cache (split-K flash-decoding, Pallas Triton).

One program per (batch, KV head, split of the sequence) walks its token range in blocks of
contiguous rows, stopping at the row's length (rows past it are neither read nor counted); the
G query heads of the group are the rows of one dot, so the cache is read once. The Pallas
`combine_splits` kernel merges the splits. Backend, and how to move it: see the docstring of
`sparse_decode_attention` (same Pallas Triton choice; this kernel uses only contiguous masked
loads, so it is also the easier one to port to Mosaic GPU).
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
_TARGET_PROGRAMS = 128  # default split count aims at about this many programs (132 SMs).
_TUNING = {"block_k": 128, "num_splits": None, "num_warps": 8, "num_stages": 3}


def _check_inputs(q, k_cache, v_cache, lengths) -> None:
    """Raise ValueError naming the offending argument when shapes or dtypes disagree."""
    check_qkv(q, k_cache, v_cache)
    b = q.shape[0]
    if lengths.shape != (b,) or lengths.dtype != jnp.int32:
        raise ValueError(f"lengths must be int32 [B={b}], got {lengths.dtype}{lengths.shape}")


def dense_decode_attention_reference(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    lengths: jax.Array,
    *,
    scale: float | None = None,
    return_lse: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Pure-JAX dense decode attention with fp32 softmax; token t of row b counts iff t < lengths[b].

    q: [B, Hq, D]; k_cache, v_cache: [B, Hkv, T, D]; lengths: [B] int32. Returns [B, Hq, D]
    in q.dtype; rows with length 0 give 0. With `return_lse` also the log-sum-exp of the scaled
    logits [B, Hq] fp32 (-inf for rows with length 0), to merge partial results.
    """
    _check_inputs(q, k_cache, v_cache, lengths)
    b, hq, d = q.shape
    hkv, t = k_cache.shape[1], k_cache.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    qr = q.reshape(b, hkv, hq // hkv, d).astype(k_cache.dtype)
    s = jnp.einsum("bhgd,bhtd->bhgt", qr, k_cache, preferred_element_type=jnp.float32) * scale
    s = jnp.where((jnp.arange(t)[None, :] < lengths[:, None])[:, None, None, :], s, -jnp.inf)
    m = s.max(axis=-1, keepdims=True)
    p = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0))
    l = p.sum(axis=-1, keepdims=True)
    o = jnp.einsum("bhgt,bhtd->bhgd", p, v_cache.astype(jnp.float32))
    o = (o / jnp.where(l > 0, l, 1.0)).reshape(b, hq, d).astype(q.dtype)
    return (o, reference_lse(s).reshape(b, hq)) if return_lse else o


def _dense_kernel(q_ref, k_ref, v_ref, len_ref, o_ref, m_ref, l_ref, *, rows, block_k, split_len,
                  scale):
    """One (batch, KV head, split) program over tokens [s*split_len, (s+1)*split_len) ∩ [0, len).

    q_ref: [Rp, D] (rows >= `rows` are padding); k_ref, v_ref: [T, D]; len_ref: [1];
    o_ref: [Rp, D], m_ref, l_ref: [Rp] (only the first `rows` are stored).
    """
    rp, d = q_ref.shape
    q = load_query(q_ref, rows, k_ref.dtype)
    start = pl.program_id(2) * split_len
    end = jnp.minimum(start + split_len, jnp.clip(len_ref[0], 0, k_ref.shape[0]))

    def body(i, carry):
        t = start + i * block_k + jnp.arange(block_k)
        ok = t < end
        tile = pl.ds(start + i * block_k, block_k)
        mask = jnp.broadcast_to(ok[:, None], (block_k, d))
        k = plgpu.load(k_ref.at[tile, :], mask=mask, other=0.0)
        v = plgpu.load(v_ref.at[tile, :], mask=mask, other=0.0)
        return online_softmax_step(q, k, v, ok, carry, scale)

    init = softmax_init(rp, d)
    n_blocks = jnp.maximum(end - start + block_k - 1, 0) // block_k
    store_partials(o_ref, m_ref, l_ref, jax.lax.fori_loop(0, n_blocks, body, init), rows)


def _dense_pallas(q, k_cache, v_cache, lengths, *, scale, interpret, return_lse, block_k, num_splits,
                  num_warps, num_stages):
    b, hq, d = q.shape
    hkv, t = k_cache.shape[1], k_cache.shape[2]
    rows = hq // hkv
    rp = max(_MIN_DOT_ROWS, next_power_of_2(rows))
    n_blocks = cdiv(t, block_k)
    splits = num_splits or max(1, min(n_blocks, next_power_of_2(cdiv(_TARGET_PROGRAMS, b * hkv))))
    split_len = cdiv(n_blocks, min(splits, n_blocks)) * block_k
    splits = cdiv(t, split_len)
    kernel = functools.partial(_dense_kernel, rows=rows, block_k=block_k, split_len=split_len,
                               scale=scale)
    cache_spec = pl.BlockSpec((None, None, t, d), lambda bi, h, s: (bi, h, 0, 0))
    f32 = jnp.float32
    o, m, l = pl.pallas_call(
        kernel,
        grid=(b, hkv, splits),
        in_specs=[
            pl.BlockSpec((None, None, rp, d), lambda bi, h, s: (bi, h, 0, 0)),
            cache_spec,
            cache_spec,
            pl.BlockSpec((1,), lambda bi, h, s: (bi,)),
        ],
        out_specs=[
            pl.BlockSpec((None, None, None, rp, d), lambda bi, h, s: (bi, h, s, 0, 0)),
            pl.BlockSpec((None, None, None, rp), lambda bi, h, s: (bi, h, s, 0)),
            pl.BlockSpec((None, None, None, rp), lambda bi, h, s: (bi, h, s, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((b, hkv, splits, rows, d), f32),
            jax.ShapeDtypeStruct((b, hkv, splits, rows), f32),
            jax.ShapeDtypeStruct((b, hkv, splits, rows), f32),
        ],
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="dense_decode_attention",
    )(q.reshape(b, hkv, rows, d), k_cache, v_cache, lengths)
    out = combine_splits(o, m, l, q.dtype, interpret).reshape(b, hq, d)
    return (out, split_lse(m, l)) if return_lse else out


def dense_decode_attention(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    lengths: jax.Array,
    *,
    scale: float | None = None,
    implementation: str = "auto",
    interpret: bool = False,
    return_lse: bool = False,
    **tuning,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Decode attention of q over the first lengths[b] cache rows of each batch row.

    q: [B, Hq, D]; k_cache, v_cache: [B, Hkv, T, D] (bf16/f16/f32, same dtype), Hq = G * Hkv;
    lengths: [B] int32 (clamped to [0, T]). Returns [B, Hq, D] in q.dtype, fp32 accumulation;
    rows with length 0 give 0. scale defaults to 1/sqrt(D). implementation: "pallas" | "xla" |
    "auto" (Pallas on GPU). tuning (Pallas only): block_k (tokens per step, power of 2 >= 16),
    num_splits (split-K count, default aims at ~128 programs), num_warps, num_stages.
    return_lse: also return the log-sum-exp of the scaled logits [B, Hq] fp32 (-inf for rows
    with length 0), so partial results over disjoint token sets can be merged.
    """
    _check_inputs(q, k_cache, v_cache, lengths)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if resolve_implementation(implementation, interpret) == "xla":
        return dense_decode_attention_reference(q, k_cache, v_cache, lengths, scale=scale, return_lse=return_lse)
    opts = attention_options(_TUNING, tuning, q.shape[-1])
    return _dense_pallas(q, k_cache, v_cache, lengths, scale=scale, interpret=interpret, return_lse=return_lse, **opts)
