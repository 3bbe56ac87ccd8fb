"""Pallas decode-attention kernels against their pure-JAX references: interpret mode on CPU and
compiled on a GPU (tests/kernel_test_base.py)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from butler_jax.kernels.dense_decode_attention import dense_decode_attention, dense_decode_attention_reference
from butler_jax.kernels.sparse_decode_attention import (
    sparse_decode_attention,
    sparse_decode_attention_reference,
)
from tests.kernel_test_base import KERNEL_MODES, assert_close

TOL = {jnp.float32: 2e-5, jnp.bfloat16: 2e-2}


def _inputs(seed: int, b: int, hkv: int, g: int, t: int, d: int, dtype):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal(shape, np.float32), dtype)
                 for shape in ((b, hkv * g, d), (b, hkv, t, d), (b, hkv, t, d)))


def _selection(seed: int, b: int, hsel: int, n: int, t: int):
    """Random indices with some invalid slots; (b=0, head 0) entirely invalid."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, t, (b, hsel, n), dtype=np.int32)
    valid = rng.random((b, hsel, n)) < 0.75
    valid[0, 0] = False
    return jnp.asarray(idx), jnp.asarray(valid)


def _close(out, ref, dtype):
    assert out.dtype == dtype
    assert_close(out, ref, TOL[dtype])


# (b, hkv, g, t, d, k, per_head, dtype, block_k, num_splits)
SPARSE_CASES = [
    (2, 2, 1, 37, 32, 21, False, jnp.float32, 16, 2),  # K not a multiple of the block, ragged split
    (2, 2, 4, 50, 32, 40, False, jnp.bfloat16, 16, None),
    (1, 2, 8, 64, 64, 64, False, jnp.float32, 32, 2),
    (2, 1, 4, 45, 32, 19, True, jnp.float32, 16, 1),  # per-query-head selection
    (1, 2, 8, 33, 32, 48, True, jnp.bfloat16, 16, 3),
]


@pytest.mark.parametrize("b,hkv,g,t,d,k,per_head,dtype,block_k,num_splits", SPARSE_CASES)
@pytest.mark.parametrize("interpret", KERNEL_MODES)
def test_sparse_matches_reference(b, hkv, g, t, d, k, per_head, dtype, block_k, num_splits,
                                  interpret):
    q, kc, vc = _inputs(b * 7 + g, b, hkv, g, t, d, dtype)
    idx, valid = _selection(t + k, b, hkv * g if per_head else hkv, k, t)
    out = sparse_decode_attention(q, kc, vc, idx, valid, implementation="pallas",
                                  interpret=interpret, block_k=block_k, num_splits=num_splits)
    ref = sparse_decode_attention_reference(q, kc, vc, idx, valid)
    _close(out, ref, dtype)
    g0 = 1 if per_head else g  # query heads covered by selection head 0 of batch 0
    np.testing.assert_array_equal(np.asarray(out[0, :g0], np.float32), 0.0)


def test_sparse_reference_matches_numpy():
    """The reference itself against a per-head numpy loop (duplicates and invalid slots)."""
    q, kc, vc = _inputs(1, 2, 2, 2, 12, 8, jnp.float32)
    idx, valid = _selection(2, 2, 4, 9, 12)
    ref = np.asarray(sparse_decode_attention_reference(q, kc, vc, idx, valid, scale=0.5))
    qn, kn, vn, ix, ok = map(np.asarray, (q, kc, vc, idx, valid))
    for b in range(2):
        for h in range(4):
            rows = ix[b, h][ok[b, h]]
            if rows.size == 0:
                np.testing.assert_array_equal(ref[b, h], 0.0)
                continue
            s = kn[b, h // 2, rows] @ qn[b, h] * 0.5
            p = np.exp(s - s.max())
            np.testing.assert_allclose(ref[b, h], p @ vn[b, h // 2, rows] / p.sum(), atol=1e-5)


def test_sparse_xla_implementation_is_reference():
    q, kc, vc = _inputs(3, 1, 2, 4, 20, 16, jnp.float32)
    idx, valid = _selection(4, 1, 2, 7, 20)
    out = sparse_decode_attention(q, kc, vc, idx, valid, implementation="xla", scale=0.3)
    ref = sparse_decode_attention_reference(q, kc, vc, idx, valid, scale=0.3)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


# (b, hkv, g, t, d, lengths, dtype, block_k, num_splits)
DENSE_CASES = [
    (3, 2, 1, 77, 32, (77, 0, 30), jnp.float32, 16, 3),  # odd T, an empty row, ragged tail
    (2, 2, 4, 64, 32, (64, 17), jnp.bfloat16, 16, None),
    (2, 1, 8, 53, 64, (1, 53), jnp.float32, 32, 2),
]


@pytest.mark.parametrize("b,hkv,g,t,d,lengths,dtype,block_k,num_splits", DENSE_CASES)
@pytest.mark.parametrize("interpret", KERNEL_MODES)
def test_dense_matches_reference(b, hkv, g, t, d, lengths, dtype, block_k, num_splits, interpret):
    q, kc, vc = _inputs(t + g, b, hkv, g, t, d, dtype)
    lengths = jnp.asarray(lengths, jnp.int32)
    out = dense_decode_attention(q, kc, vc, lengths, implementation="pallas",
                                 interpret=interpret, block_k=block_k, num_splits=num_splits)
    with jax.default_matmul_precision("highest"):  # on a GPU the default f32 dot is TF32
        ref = dense_decode_attention_reference(q, kc, vc, lengths)
    _close(out, ref, dtype)


def test_dense_reference_matches_full_softmax():
    q, kc, vc = _inputs(5, 1, 2, 2, 10, 8, jnp.float32)
    ref = dense_decode_attention_reference(q, kc, vc, jnp.array([6], jnp.int32))
    kr = jnp.repeat(kc[:, :, :6], 2, axis=1)
    vr = jnp.repeat(vc[:, :, :6], 2, axis=1)
    p = jax.nn.softmax(jnp.einsum("bhd,bhtd->bht", q, kr) / math.sqrt(8), axis=-1)
    np.testing.assert_allclose(ref, jnp.einsum("bht,bhtd->bhd", p, vr), atol=1e-5)


@pytest.mark.parametrize("interpret", KERNEL_MODES)
def test_dense_equals_sparse_over_all_tokens(interpret):
    q, kc, vc = _inputs(6, 1, 2, 4, 40, 32, jnp.float32)
    idx = jnp.broadcast_to(jnp.arange(40, dtype=jnp.int32), (1, 2, 40))
    valid = idx < 25
    sparse = sparse_decode_attention(q, kc, vc, idx, valid, implementation="pallas",
                                     interpret=interpret, block_k=16)
    dense = dense_decode_attention(q, kc, vc, jnp.array([25], jnp.int32), implementation="pallas",
                                   interpret=interpret, block_k=16)
    np.testing.assert_allclose(sparse, dense, atol=2e-5)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"indices": lambda x: x.astype(jnp.int64 if jax.config.x64_enabled else jnp.int16)},
         "indices must be int32"),
        ({"indices": lambda x: x[:, :1]}, "indices must be"),
        ({"valid": lambda x: x.astype(jnp.int32)}, "valid must be bool"),
        ({"k_cache": lambda x: x.astype(jnp.bfloat16)}, "dtype"),
        ({"q": lambda x: x[:, :3]}, "does not fit"),
    ],
)
def test_sparse_rejects_bad_inputs(change, match):
    q, kc, vc = _inputs(0, 1, 2, 2, 16, 16, jnp.float32)
    idx, valid = _selection(0, 1, 2, 4, 16)
    args = {"q": q, "k_cache": kc, "v_cache": vc, "indices": idx, "valid": valid}
    for name, fn in change.items():
        args[name] = fn(args[name])
    with pytest.raises(ValueError, match=match):
        sparse_decode_attention(**args)


def test_bad_options_rejected():
    q, kc, vc = _inputs(0, 1, 2, 2, 16, 16, jnp.float32)
    lengths = jnp.array([3], jnp.int32)
    with pytest.raises(ValueError, match="lengths must be int32"):
        dense_decode_attention(q, kc, vc, lengths.astype(jnp.float32))
    with pytest.raises(ValueError, match="implementation must be one of"):
        dense_decode_attention(q, kc, vc, lengths, implementation="cuda")
    with pytest.raises(ValueError, match="unknown tuning options"):
        dense_decode_attention(q, kc, vc, lengths, implementation="pallas", block_q=4)
    with pytest.raises(ValueError, match="block_k must be a power of 2"):
        dense_decode_attention(q, kc, vc, lengths, implementation="pallas", block_k=24)


def test_attention_kernels_lower_for_cuda():
    """The Pallas Triton lowering of both kernels at the decode shape, on any host."""
    from jax import export

    q = jax.ShapeDtypeStruct((1, 32, 128), jnp.bfloat16)
    cache = jax.ShapeDtypeStruct((1, 8, 4096, 128), jnp.bfloat16)
    idx = jax.ShapeDtypeStruct((1, 8, 1024), jnp.int32)
    ok = jax.ShapeDtypeStruct((1, 8, 1024), jnp.bool_)
    lengths = jax.ShapeDtypeStruct((1,), jnp.int32)
    checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    sparse = jax.jit(lambda *a: sparse_decode_attention(*a, implementation="pallas"))
    dense = jax.jit(lambda *a: dense_decode_attention(*a, implementation="pallas"))
    for fn, args in ((sparse, (q, cache, cache, idx, ok)), (dense, (q, cache, cache, lengths))):
        mod = export.export(fn, platforms=["cuda"], disabled_checks=checks)(*args).mlir_module()
        assert mod.count("xla.gpu.triton") == 2  # the attention kernel and combine_splits


def _lse(s: np.ndarray) -> np.ndarray:
    """log-sum-exp over the last axis of logits s (-inf = not counted) -> [...]; -inf where nothing counts."""
    top = s.max(-1)
    safe = np.where(np.isfinite(top), top, 0.0)
    total = np.exp(s - safe[..., None]).sum(-1)
    return np.where(np.isfinite(top), safe + np.log(np.where(total > 0, total, 1.0)), -np.inf)


@pytest.mark.parametrize("interpret", KERNEL_MODES)
def test_dense_return_lse_gives_the_logits_log_sum_exp(interpret):
    """return_lse=True: the same output and the LSE of the counted tokens (-inf for an empty row),
    from the kernel's split partials and from the reference."""
    q, kc, vc = _inputs(7, 3, 2, 2, 50, 32, jnp.float32)
    lengths = jnp.asarray([50, 0, 19], jnp.int32)
    qn, kn = np.asarray(q, np.float64), np.repeat(np.asarray(kc, np.float64), 2, axis=1)
    s = np.einsum("bhd,bhtd->bht", qn, kn) / math.sqrt(32)
    want = _lse(np.where(np.arange(50)[None, None, :] < np.asarray(lengths)[:, None, None], s, -np.inf))
    for impl in ("pallas", "xla"):
        tuning = {"block_k": 16, "num_splits": 3} if impl == "pallas" else {}
        out, lse = dense_decode_attention(q, kc, vc, lengths, implementation=impl, interpret=interpret,
                                          return_lse=True, **tuning)
        assert lse.shape == (3, 4) and lse.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(lse), want, atol=1e-4)
        plain = dense_decode_attention(q, kc, vc, lengths, implementation=impl, interpret=interpret, **tuning)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(plain))


@pytest.mark.parametrize("interpret", KERNEL_MODES)
def test_sparse_return_lse_gives_the_selection_log_sum_exp(interpret):
    """Every valid slot counts (a duplicate twice); (b=0, head 0) has no valid slot: -inf."""
    q, kc, vc = _inputs(8, 2, 2, 2, 40, 32, jnp.float32)
    idx, valid = _selection(9, 2, 2, 21, 40)
    qn, kn, ix, ok = np.asarray(q, np.float64), np.asarray(kc, np.float64), np.asarray(idx), np.asarray(valid)
    rows = kn[np.arange(2)[:, None, None], np.arange(2)[None, :, None], ix]  # [B, Hsel, K, D]
    s = np.einsum("bhgd,bhkd->bhgk", qn.reshape(2, 2, 2, 32), rows) / math.sqrt(32)
    want = _lse(np.where(ok[:, :, None, :], s, -np.inf)).reshape(2, 4)
    for impl in ("pallas", "xla"):
        tuning = {"block_k": 16, "num_splits": 2} if impl == "pallas" else {}
        _, lse = sparse_decode_attention(q, kc, vc, idx, valid, implementation=impl, interpret=interpret,
                                         return_lse=True, **tuning)
        np.testing.assert_allclose(np.asarray(lse), want, atol=1e-4)
        assert np.isneginf(np.asarray(lse)[0, :2]).all()
