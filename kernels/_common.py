"""Helpers shared by the kernels: backend choice, the decode-attention kernels' input checks,
options and partial-result plumbing, split-K combine, online-softmax block."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

IMPLEMENTATIONS = ("auto", "pallas", "xla")


def resolve_implementation(implementation: str, interpret: bool = False) -> str:
    """Map "auto" | "pallas" | "xla" to "pallas" or "xla".

    "auto" picks Pallas on a GPU backend (or when `interpret=True`, which runs the Pallas kernel
    through the CPU interpreter) and XLA elsewhere.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation != "auto":
        return implementation
    return "pallas" if interpret or jax.default_backend() == "gpu" else "xla"


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (and >= 1)."""
    return 1 << max(0, (n - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative ints."""
    return -(-a // b)


def check_qkv(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array) -> None:
    """Decode-attention inputs q [B, Hq, D], k_cache = v_cache [B, Hkv, T, D] with Hkv | Hq;
    raise ValueError naming the offending argument."""
    if q.ndim != 3:
        raise ValueError(f"q must be [B, Hq, D], got shape {q.shape}")
    if k_cache.ndim != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            f"k_cache and v_cache must both be [B, Hkv, T, D], got {k_cache.shape} and {v_cache.shape}"
        )
    if k_cache.dtype != v_cache.dtype:
        raise ValueError(f"k_cache dtype {k_cache.dtype} != v_cache dtype {v_cache.dtype}")
    b, hq, d = q.shape
    bk, hkv, _, dk = k_cache.shape
    if bk != b or dk != d or hq % hkv:
        raise ValueError(f"q {q.shape} does not fit k_cache {k_cache.shape} (batch, head dim, GQA)")


def attention_options(defaults: dict, tuning: dict, d: int) -> dict:
    """Pallas tuning of a decode-attention kernel: defaults overridden by `tuning`, checked
    (known names, power-of-2 head dim >= 16, power-of-2 block_k >= 16)."""
    unknown = set(tuning) - set(defaults)
    if unknown:
        raise ValueError(f"unknown tuning options {sorted(unknown)}; known: {sorted(defaults)}")
    opts = {**defaults, **tuning}
    bk = opts["block_k"]
    if d < 16 or d & (d - 1):
        raise ValueError(f"the Pallas kernel needs a power-of-2 head dim >= 16, got D={d}")
    if bk < 16 or bk & (bk - 1):
        raise ValueError(f"block_k must be a power of 2 >= 16, got {bk}")
    return opts


def load_query(q_ref, rows: int, dtype) -> jax.Array:
    """The query tile [Rp, D] of a program (padding rows >= `rows` read as 0), cast to `dtype`."""
    rp, d = q_ref.shape
    ok = jnp.broadcast_to((jnp.arange(rp) < rows)[:, None], (rp, d))
    return plgpu.load(q_ref, mask=ok, other=0.0).astype(dtype)


def softmax_init(rp: int, d: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Empty online-softmax carry (o [Rp, D], m [Rp] at a finite floor, l [Rp]), fp32."""
    return (jnp.zeros((rp, d), jnp.float32), jnp.full((rp,), -1e30, jnp.float32),
            jnp.zeros((rp,), jnp.float32))


def store_partials(o_ref, m_ref, l_ref, carry, rows: int) -> None:
    """Store a split's (o, m, l) carry; only the first `rows` of the padded Rp rows."""
    o, m, l = carry
    rp, d = o.shape
    row_ok = jnp.arange(rp) < rows
    plgpu.store(o_ref, o, mask=jnp.broadcast_to(row_ok[:, None], (rp, d)))
    plgpu.store(m_ref, m, mask=row_ok)
    plgpu.store(l_ref, l, mask=row_ok)


_COMBINE_D_BLOCK = 32  # head-dim columns per combine program (keeps [S, R, 32] in registers).


def _combine_kernel(o_ref, m_ref, l_ref, out_ref, *, splits, rows):
    """Merge one (batch, head, column block): o_ref [Sp, Rp, Dc], m_ref/l_ref [Sp, Rp] -> [Rp, Dc].

    Entries at split >= `splits` or row >= `rows` are padding (masked loads, masked store).
    """
    sp, rp, dc = o_ref.shape
    ok = (jnp.arange(sp)[:, None] < splits) & (jnp.arange(rp)[None, :] < rows)
    m = plgpu.load(m_ref, mask=ok, other=-jnp.inf)
    l = plgpu.load(l_ref, mask=ok, other=0.0)
    o = plgpu.load(o_ref, mask=jnp.broadcast_to(ok[:, :, None], (sp, rp, dc)), other=0.0)
    w = jnp.exp(m - m.max(axis=0)[None, :])
    l_tot = (l * w).sum(axis=0)
    out = (o * w[:, :, None]).sum(axis=0) / jnp.where(l_tot > 0, l_tot, 1.0)[:, None]
    row_ok = jnp.broadcast_to((jnp.arange(rp) < rows)[:, None], (rp, dc))
    plgpu.store(out_ref, out.astype(out_ref.dtype), mask=row_ok)


def combine_splits(
    o: jax.Array, m: jax.Array, l: jax.Array, dtype: jnp.dtype, interpret: bool
) -> jax.Array:
    """Merge split-K partial softmax results (flash-decoding epilogue) in one Pallas kernel.

    o: [B, H, S, R, D] unnormalised fp32 partial outputs; m, l: [B, H, S, R] running max (finite)
    and sum of each split. Returns [B, H, R, D] in `dtype`; rows with l = 0 everywhere are 0.
    """
    b, h, splits, rows, d = o.shape
    sp, rp, dc = next_power_of_2(splits), next_power_of_2(rows), min(d, _COMBINE_D_BLOCK)
    kernel = functools.partial(_combine_kernel, splits=splits, rows=rows)
    ml_spec = pl.BlockSpec((None, None, sp, rp), lambda bi, hi, j: (bi, hi, 0, 0))
    return pl.pallas_call(
        kernel,
        grid=(b, h, d // dc),
        in_specs=[
            pl.BlockSpec((None, None, sp, rp, dc), lambda bi, hi, j: (bi, hi, 0, 0, j)),
            ml_spec,
            ml_spec,
        ],
        out_specs=pl.BlockSpec((None, None, rp, dc), lambda bi, hi, j: (bi, hi, 0, j)),
        out_shape=jax.ShapeDtypeStruct((b, h, rows, d), dtype),
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=1),
        interpret=interpret,
        name="combine_splits",
    )(o, m, l)


def split_lse(m: jax.Array, l: jax.Array) -> jax.Array:
    """Log-sum-exp of the logits behind split-K partials: m, l [B, H, S, R] (running max, finite;
    sum of exp(s - m)) -> [B, H * R] fp32; -inf where no split counted a token (l = 0 everywhere)."""
    b, h, _, r = m.shape
    top = m.max(axis=2)
    total = (l * jnp.exp(m - top[:, :, None])).sum(axis=2)
    lse = jnp.where(total > 0, top + jnp.log(jnp.where(total > 0, total, 1.0)), -jnp.inf)
    return lse.reshape(b, h * r)


def reference_lse(s: jax.Array) -> jax.Array:
    """Log-sum-exp over the last axis of masked logits s [..., T] (-inf = masked) -> [...]; -inf if all masked."""
    m = s.max(axis=-1)
    finite = jnp.isfinite(m)
    total = jnp.exp(s - jnp.where(finite, m, 0.0)[..., None]).sum(axis=-1)
    return jnp.where(finite, m + jnp.log(jnp.where(total > 0, total, 1.0)), -jnp.inf)


def online_softmax_step(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    ok: jax.Array,
    carry: tuple[jax.Array, jax.Array, jax.Array],
    scale: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One flash-attention block inside a Pallas kernel.

    q: [R, D], k/v: [N, D] (same dtype as q), ok: [N] bool (False slots are ignored);
    carry = (o [R, D], m [R], l [R]) fp32 with m started at a finite floor, so all-masked
    blocks leave o and l unchanged instead of producing NaN.
    """
    o, m, l = carry
    exact = k.dtype == jnp.float32
    s = plgpu.dot(q, k, trans_b=True, allow_tf32=not exact) * scale
    s = jnp.where(ok[None, :], s, -jnp.inf)
    m_new = jnp.maximum(m, s.max(axis=1))
    alpha = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new[:, None])
    l_new = l * alpha + p.sum(axis=1)
    o_new = o * alpha[:, None] + plgpu.dot(p.astype(v.dtype), v, allow_tf32=not exact)
    return o_new, m_new, l_new
