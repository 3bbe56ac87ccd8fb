"""TokenButler predictor scoring + top-K selection, and the Oracle's selection from true logits.

Scoring reads the importance keys once ([B, S, T, d'] bf16 or int8: 32x / 16x more bytes than
the f32 scores at d'=16) and writes f32 scores [B*S, T]; `topk_select` then reads those small
scores (L2-resident at decode sizes). On a GPU (`implementation` "pallas" / "auto") scoring is a
Pallas kernel (`_score_pallas`: one program per (row, 4096-token block), products and the sum
over d' in f32), elsewhere the XLA einsum (`importance_scores`).

The `score_and_select` "anomaly" (H200, B=1, 8 / 32 heads, T=131072: 165 / 307 us where scoring 18 / 54
us + selection 72 / 94 us were expected) was the benchmark's: its timing carry zeroed query head 0 (the
selection's first index, the sink 0, is even), so that row's scores were all equal, the sampled
bracket refused it and every timed call also ran the radix fallback (tests/test_bench_select.py).
`bench.select_topk.next_input` now changes one element; not yet re-measured on the GPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from butler_jax.kernels._common import resolve_implementation
from butler_jax.kernels.topk_select import topk_select, topk_select_reference

_SCORE_BLOCK = 4096  # tokens per scoring program


def _check_lengths(lengths: jax.Array, b: int) -> None:
    if lengths.shape != (b,):
        raise ValueError(f"lengths must be [B={b}], got shape {lengths.shape}")


def importance_scores(q_imp: jax.Array, k_imp: jax.Array, k_scale: jax.Array | None = None, *,
                      implementation: str = "xla", interpret: bool = False) -> jax.Array:
    """q_imp [B, S, d'], k_imp [B, S, T, d'] (bf16, or int8 with k_scale [B, S, T]) -> [B, S, T] f32.

    implementation "xla" (default): the einsum; "pallas" / "auto" on a GPU: the Pallas scorer
    where T is a multiple of its block and d' a power of 2 >= 16 (else the einsum).
    """
    _check_scoring(q_imp, k_imp, k_scale)
    b, s, t, d = k_imp.shape
    fits = t % _SCORE_BLOCK == 0 and d >= 16 and d & (d - 1) == 0
    if fits and resolve_implementation(implementation, interpret) == "pallas":
        return _score_pallas(q_imp, k_imp, k_scale, interpret).reshape(b, s, t)
    s = jnp.einsum("bsd,bstd->bst", q_imp.astype(jnp.float32), k_imp.astype(jnp.float32))
    return s if k_scale is None else s * k_scale.astype(jnp.float32)


def _check_scoring(q_imp, k_imp, k_scale) -> None:
    if q_imp.ndim != 3 or k_imp.ndim != 4 or k_imp.shape[:2] != q_imp.shape[:2] \
            or k_imp.shape[3] != q_imp.shape[2]:
        raise ValueError(f"need q_imp [B, S, d'] and k_imp [B, S, T, d'], got {q_imp.shape} "
                         f"and {k_imp.shape}")
    if (k_imp.dtype == jnp.int8) != (k_scale is not None):
        raise ValueError(f"k_scale must be given exactly when k_imp is int8 (k_imp {k_imp.dtype})")


def _score_kernel(q_ref, k_ref, *refs, scaled: bool):
    """One (row, token block): q_ref [d'], k_ref [N, d'] (, scale_ref [N]) -> o_ref [N] f32."""
    o_ref = refs[-1]
    s = jnp.sum(k_ref[...].astype(jnp.float32) * q_ref[...].astype(jnp.float32)[None, :], axis=1)
    o_ref[...] = s * refs[0][...] if scaled else s


@functools.partial(jax.jit, static_argnames=("interpret",))
def _score_pallas(q_imp, k_imp, k_scale, interpret: bool):
    """Pallas scoring: q_imp [B, S, d'], k_imp [B, S, T, d'] (, k_scale [B, S, T]) -> [B*S, T]."""
    b, s, t, d = k_imp.shape
    r = b * s
    n = _SCORE_BLOCK
    ins = [q_imp.reshape(r, d), k_imp.reshape(r, t, d)]
    specs = [pl.BlockSpec((None, d), lambda i, j: (i, 0)),
             pl.BlockSpec((None, n, d), lambda i, j: (i, j, 0))]
    if k_scale is not None:
        ins.append(k_scale.reshape(r, t).astype(jnp.float32))
        specs.append(pl.BlockSpec((None, n), lambda i, j: (i, j)))
    return pl.pallas_call(
        functools.partial(_score_kernel, scaled=k_scale is not None),
        grid=(r, t // n),
        in_specs=specs,
        out_specs=pl.BlockSpec((None, n), lambda i, j: (i, j)),
        out_shape=jax.ShapeDtypeStruct((r, t), jnp.float32),
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret, name="importance_scores",
    )(*ins)


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
    scores = importance_scores(q_imp, k_imp, k_scale, implementation=implementation,
                               interpret=interpret).reshape(b * s, t)
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
