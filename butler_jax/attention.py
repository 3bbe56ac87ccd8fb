"""The one attention implementation of the backbone (XLA): logits, masks and masked softmax.

Every path (full forward, chunked teacher logits for training, Oracle scoring, decode) calls
`attention_logits`; `masked_attention` turns logits + a boolean keep-mask into outputs.
Shapes: B batch, Tq queries, Tk keys, Hq query heads, Hkv KV heads, G = Hq // Hkv, D head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -1e30  # finite "minus infinity": fully masked rows give zeros, not NaN


KV_LAYOUTS = {"bthd": "bkhd", "bhtd": "bhkd"}  # token-major (fresh k/v) or head-major (the cache)


def attention_logits(q: jnp.ndarray, k: jnp.ndarray, kv_layout: str = "bthd") -> jnp.ndarray:
    """Pre-softmax logits q.k/sqrt(D) in float32.

    q: [B, Tq, Hq, D], k: [B, Tk, Hkv, D] ("bthd") or [B, Hkv, Tk, D] ("bhtd", the KV cache)
    -> [B, Hq, Tq, Tk] (each KV head shared by G = Hq // Hkv consecutive query heads).
    """
    b, tq, hq, d = q.shape
    hkv = k.shape[2] if kv_layout == "bthd" else k.shape[1]
    tk = k.shape[1] if kv_layout == "bthd" else k.shape[2]
    qg = q.reshape(b, tq, hkv, hq // hkv, d)
    spec = f"bqhgd,{KV_LAYOUTS[kv_layout]}->bhgqk"
    logits = jnp.einsum(spec, qg, k, preferred_element_type=jnp.float32)
    return logits.reshape(b, hq, tq, tk) * (d**-0.5)


def causal_mask(q_positions: jnp.ndarray, k_positions: jnp.ndarray, k_lengths: jnp.ndarray | None = None,
                window: int | None = None) -> jnp.ndarray:
    """Keep-mask [B, 1, Tq, Tk]: key position <= query position (and < k_lengths[b] if given;
    and > query position - window for a sliding window, as transformers' sliding mask)."""
    keep = k_positions[:, None, :] <= q_positions[:, :, None]
    if window is not None:
        keep = keep & (k_positions[:, None, :] > q_positions[:, :, None] - window)
    if k_lengths is not None:
        keep = keep & (k_positions[:, None, :] < k_lengths[:, None, None])
    return keep[:, None]


def masked_attention(logits: jnp.ndarray, keep: jnp.ndarray, v: jnp.ndarray, kv_layout: str = "bthd") -> jnp.ndarray:
    """Softmax over kept keys, then weighted sum of values.

    logits: [B, Hq, Tq, Tk] f32, keep: bool broadcastable to logits, v: [B, Tk, Hkv, D]
    ("bthd") or [B, Hkv, Tk, D] ("bhtd") -> [B, Tq, Hq, D] in v.dtype. Rows with no kept key
    give zeros.
    """
    b, hq, tq, tk = logits.shape
    hkv = v.shape[2] if kv_layout == "bthd" else v.shape[1]
    d = v.shape[3]
    masked = jnp.where(keep, logits, NEG_INF)
    m = jnp.max(masked, axis=-1, keepdims=True)
    p = jnp.where(keep, jnp.exp(masked - m), 0.0)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(denom == 0, 1.0, denom)
    pg = p.reshape(b, hkv, hq // hkv, tq, tk).astype(v.dtype)
    out = jnp.einsum(f"bhgqk,{KV_LAYOUTS[kv_layout]}->bqhgd", pg, v, preferred_element_type=jnp.float32)
    return out.reshape(b, tq, hq, d).astype(v.dtype)


def causal_attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    q_positions: jnp.ndarray,
    k_positions: jnp.ndarray,
    k_lengths: jnp.ndarray | None = None,
    keep: jnp.ndarray | None = None,
    window: int | None = None,
) -> jnp.ndarray:
    """Dense causal attention; `keep` ([B, Hq|1, Tq, Tk]) further restricts the kept keys, and so
    does a sliding `window` (keys within the last `window` positions).

    q: [B, Tq, Hq, D], k/v: [B, Tk, Hkv, D], positions: [B, Tq] / [B, Tk] -> [B, Tq, Hq, D].
    """
    logits = attention_logits(q, k)
    mask = causal_mask(q_positions, k_positions, k_lengths, window)
    if keep is not None:
        mask = mask & keep
    return masked_attention(logits, mask, v)


def softmax_probs(logits: jnp.ndarray, keep: jnp.ndarray) -> jnp.ndarray:
    """Attention probabilities [.., Tk] over kept keys (float32); used by H2O/SnapKV statistics."""
    masked = jnp.where(keep, logits, NEG_INF)
    p = jax.nn.softmax(masked, axis=-1)
    return jnp.where(keep, p, 0.0)
