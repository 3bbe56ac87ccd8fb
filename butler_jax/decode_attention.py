"""Decode-step attention over the cache: routes to the Pallas kernels or their XLA references.

q: [B, 1, Hq, hd]; cache layer k/v: [B, Hkv, T, hd]; outputs [B, 1, Hq, hd].
"""

from __future__ import annotations

import jax.numpy as jnp

from butler_jax.attention import attention_logits, masked_attention


def dense_attend(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, lengths: jnp.ndarray, implementation: str = "auto") -> jnp.ndarray:
    """Attention of each row's query over its first lengths[b] cached tokens."""
    logits = attention_logits(q, k, kv_layout="bhtd")
    keep = jnp.arange(k.shape[2])[None, None, None, :] < lengths[:, None, None, None]
    return masked_attention(logits, keep, v, kv_layout="bhtd")


def sparse_attend(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, indices: jnp.ndarray, valid: jnp.ndarray,
                  implementation: str = "auto") -> jnp.ndarray:
    """Attention of each row's query over the selected tokens only.

    indices/valid: [B, Hsel, K] with Hsel = Hkv (per KV head) or Hq (per query head).
    """
    from butler_jax.sparsity.select import indices_to_mask

    hq, hsel = q.shape[2], indices.shape[1]
    keep = indices_to_mask(indices, valid, k.shape[2])
    keep = jnp.repeat(keep, hq // hsel, axis=1)[:, :, None, :]
    return masked_attention(attention_logits(q, k, kv_layout="bhtd"), keep, v, kv_layout="bhtd")
