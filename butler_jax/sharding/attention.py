"""Decode attention over a sequence-sharded cache: each device attends to its own tokens (dense)
or to its part of the selection (sparse) and returns its partial output with the log-sum-exp of
its logits; the partials are merged across the `seq` axis by their LSE (the split-K contract of
`kernels/_common.combine_splits`, here one split per device).

q: [B, 1, Hq, hd]; local cache layer k/v: [B, Hkv, Tl, hd]; outputs [B, 1, Hq, hd].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from butler_jax.attention import masked_attention
from butler_jax.kernels._common import reference_lse
from butler_jax.kernels.dense_decode_attention import dense_decode_attention
from butler_jax.kernels.sparse_decode_attention import sparse_decode_attention
from butler_jax.sharding.local import Shard


def merge_partials(out: jnp.ndarray, lse: jnp.ndarray, shard: Shard) -> jnp.ndarray:
    """Merge per-device normalised partial outputs out [..., D] with their log-sum-exp lse [...]
    (-inf: the device saw no token) across the seq axis -> [..., D] in out.dtype."""
    if shard.n_seq == 1:
        return out
    top = jax.lax.pmax(lse, shard.seq_axis)
    weight = jnp.exp(lse - jnp.where(jnp.isfinite(top), top, 0.0))
    num = jax.lax.psum(out.astype(jnp.float32) * weight[..., None], shard.seq_axis)
    den = jax.lax.psum(weight, shard.seq_axis)
    return (num / jnp.where(den > 0, den, 1.0)[..., None]).astype(out.dtype)


def dense_attend(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, counts: jnp.ndarray, shard: Shard,
                 implementation: str = "auto") -> jnp.ndarray:
    """Attention of each row's query over its first counts[b] (global) tokens."""
    tl = k.shape[2]
    local = jnp.clip(counts - shard.offset(tl), 0, tl).astype(jnp.int32)
    out, lse = dense_decode_attention(q[:, 0], k, v, local, implementation=implementation, return_lse=True)
    return merge_partials(out, lse, shard)[:, None]


def sparse_attend(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, indices: jnp.ndarray, valid: jnp.ndarray,
                  shard: Shard, implementation: str = "auto") -> jnp.ndarray:
    """Attention over the selection; indices [B, Hsel, K] are local slots of this device's part."""
    out, lse = sparse_decode_attention(q[:, 0], k, v, indices, valid, implementation=implementation, return_lse=True)
    return merge_partials(out, lse, shard)[:, None]


def masked_attend(logits: jnp.ndarray, keep: jnp.ndarray, v: jnp.ndarray, shard: Shard) -> jnp.ndarray:
    """`attention.masked_attention` of one query row over local keys: logits [B, H, 1, Tl] f32,
    keep broadcastable to it, v [B, H, Tl, D] (head-major) -> [B, 1, H, D], merged across devices."""
    out = masked_attention(logits, keep, v, kv_layout="bhtd")  # [B, 1, H, D]
    lse = reference_lse(jnp.where(keep, logits, -jnp.inf))[:, :, 0]  # [B, H]
    return merge_partials(out[:, 0], lse, shard)[:, None]
