"""TokenButler predictor scoring + top-K selection, and the Oracle's selection from true logits.

Scoring is not fused into the radix passes: each pass would re-read the importance keys
([B, S, T, d'] bf16 = 32x larger than the f32 scores at d'=16), so the keys are read once by an
XLA einsum (a memory-bound matvec XLA already runs near bandwidth) into f32 scores [B*S, T],
and `topk_select` then reads those small scores a few times. Measured on the H100 at
B=1, S=32, T=131072 with the radix select (2026-11-24): 219 us (bf16 keys) / 210 us (int8)
against 164 us for the selection alone, so the einsum's ~50 us is near the 134 MB read's
bandwidth floor (~45 us). With the sampled select (2026-11-26) it measured 330 us although the
selection alone takes 106 us: not yet explained (bench/results/select_h100.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from butler_jax.kernels.topk_select import topk_select, topk_select_reference


def _check_lengths(lengths: jax.Array, b: int) -> None:
    if lengths.shape != (b,):
        raise ValueError(f"lengths must be [B={b}], got shape {lengths.shape}")


def importance_scores(q_imp: jax.Array, k_imp: jax.Array,
                      k_scale: jax.Array | None = None) -> jax.Array:
    """q_imp [B, S, d'], k_imp [B, S, T, d'] (bf16, or int8 with k_scale [B, S, T]) -> [B, S, T] f32."""
    if q_imp.ndim != 3 or k_imp.ndim != 4 or k_imp.shape[:2] != q_imp.shape[:2] \
            or k_imp.shape[3] != q_imp.shape[2]:
        raise ValueError(f"need q_imp [B, S, d'] and k_imp [B, S, T, d'], got {q_imp.shape} "
                         f"and {k_imp.shape}")
    if (k_imp.dtype == jnp.int8) != (k_scale is not None):
        raise ValueError(f"k_scale must be given exactly when k_imp is int8 (k_imp {k_imp.dtype})")
    s = jnp.einsum("bsd,bstd->bst", q_imp.astype(jnp.float32), k_imp.astype(jnp.float32))
    return s if k_scale is None else s * k_scale.astype(jnp.float32)


def score_and_select(q_imp: jax.Array, k_imp: jax.Array, lengths: jax.Array, k: int, *,
                     k_scale: jax.Array | None = None, n_sink: int = 0, n_recent: int = 0,
                     implementation: str = "auto",
                     interpret: bool = False) -> tuple[jax.Array, jax.Array]:
    """Score every cached token with the predictor and select per (batch, head).

    q_imp [B, S, d'], k_imp [B, S, T, d'], lengths [B] -> indices, valid [B, S, K] with the
    semantics and ascending order of `topk_select` (sinks and recent window always in).
    """
    b, s, t = k_imp.shape[:3]
    _check_lengths(lengths, b)
    scores = importance_scores(q_imp, k_imp, k_scale).reshape(b * s, t)
    idx, valid = topk_select(scores, k, jnp.repeat(lengths.astype(jnp.int32), s),
                             n_sink=n_sink, n_recent=n_recent, implementation=implementation,
                             interpret=interpret)
    return idx.reshape(b, s, k), valid.reshape(b, s, k)


def score_and_select_reference(q_imp: jax.Array, k_imp: jax.Array, lengths: jax.Array, k: int,
                               *, k_scale: jax.Array | None = None, n_sink: int = 0,
                               n_recent: int = 0, implementation: str = "xla",
                               interpret: bool = False) -> tuple[jax.Array, jax.Array]:
    """lax.top_k reference of `score_and_select`; `implementation`/`interpret` are ignored."""
    b, s, t = k_imp.shape[:3]
    _check_lengths(lengths, b)
    scores = importance_scores(q_imp, k_imp, k_scale).reshape(b * s, t)
    idx, valid = topk_select_reference(scores, k, jnp.repeat(lengths.astype(jnp.int32), s),
                                       n_sink=n_sink, n_recent=n_recent)
    return idx.reshape(b, s, k), valid.reshape(b, s, k)


def oracle_logits(q: jax.Array, k_cache: jax.Array, group_reduce: str = "max") -> jax.Array:
    """q [B, H, D], k_cache [B, S, T, D] (S KV heads, H = S * G) -> [B, S, T] f32.

    True attention logits q.k / sqrt(D) per query head, reduced over the G query heads of each
    KV head: "max" (default, a token any head needs is kept) or "mean".
    """
    if group_reduce not in ("max", "mean"):
        raise ValueError(f"group_reduce must be 'max' or 'mean', got {group_reduce!r}")
    b, h, d = q.shape
    s = k_cache.shape[1]
    if k_cache.ndim != 4 or k_cache.shape[0] != b or k_cache.shape[3] != d or h % s:
        raise ValueError(f"need q [B, H, D], k_cache [B, S, T, D] with S | H, got {q.shape} "
                         f"and {k_cache.shape}")
    qg = q.reshape(b, s, h // s, d).astype(jnp.float32)
    logits = jnp.einsum("bsgd,bstd->bsgt", qg, k_cache.astype(jnp.float32)) * d ** -0.5
    return logits.max(axis=2) if group_reduce == "max" else logits.mean(axis=2)


def oracle_select(q: jax.Array, k_cache: jax.Array, lengths: jax.Array, k: int, *,
                  group_reduce: str = "max", n_sink: int = 0, n_recent: int = 0,
                  implementation: str = "auto",
                  interpret: bool = False) -> tuple[jax.Array, jax.Array]:
    """Oracle selection per KV head: `topk_select` on `oracle_logits`. -> indices, valid [B, S, K]."""
    b, s, t = k_cache.shape[:3]
    _check_lengths(lengths, b)
    scores = oracle_logits(q, k_cache, group_reduce).reshape(b * s, t)
    idx, valid = topk_select(scores, k, jnp.repeat(lengths.astype(jnp.int32), s),
                             n_sink=n_sink, n_recent=n_recent, implementation=implementation,
                             interpret=interpret)
    return idx.reshape(b, s, k), valid.reshape(b, s, k)
