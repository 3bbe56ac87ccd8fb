"""Decode-step attention over the cache, routed to the Pallas kernels (GPU) or their XLA
references (elsewhere) by `implementation` ("auto" | "pallas" | "xla").

q: [B, 1, Hq, hd]; cache layer k/v: [B, Hkv, T, hd]; outputs [B, 1, Hq, hd].
"""

from __future__ import annotations

import jax.numpy as jnp

from butler_jax.kernels.dense_decode_attention import dense_decode_attention
from butler_jax.kernels.sparse_decode_attention import sparse_decode_attention


def dense_attend(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, lengths: jnp.ndarray, implementation: str = "auto") -> jnp.ndarray:
    """Attention of each row's query over its first lengths[b] cached tokens."""
    return dense_decode_attention(q[:, 0], k, v, lengths, implementation=implementation)[:, None]


def sparse_attend(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, indices: jnp.ndarray, valid: jnp.ndarray,
                  implementation: str = "auto") -> jnp.ndarray:
    """Attention over the selected tokens only; indices/valid: [B, Hsel, K], Hsel = Hkv or Hq."""
    return sparse_decode_attention(q[:, 0], k, v, indices, valid, implementation=implementation)[:, None]
