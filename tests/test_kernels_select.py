"""topk_select (sampled / radix) / score_and_select / oracle_select vs numpy exact top-K: Pallas in interpret mode on CPU and compiled on a GPU
(tests/kernel_test_base.py), and the XLA reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from butler_jax.kernels.score_select import (importance_scores, oracle_logits, oracle_select,
                                  score_and_select, score_and_select_reference)
from butler_jax.kernels.topk_select import (_plan, _sampled_select, sample_positions, topk_select,
                                           topk_select_reference)
from tests.kernel_test_base import KERNEL_MODES


def _exact(scores: np.ndarray, k: int, lengths: np.ndarray, n_sink: int, n_recent: int):
    """Numpy top-K per row (stable: ties to the lower index) -> list of sorted index arrays."""
    out = []
    for row, n in zip(scores.astype(np.float32), lengths):
        forced = set(range(min(n_sink, n))) | set(range(max(n - n_recent, 0), n))
        rest = np.array([i for i in range(n) if i not in forced], dtype=np.int64)
        order = rest[np.argsort(-row[rest], kind="stable")] if rest.size else rest
        out.append(np.sort(np.concatenate([np.array(sorted(forced), np.int64),
                                           order[: k - len(forced)]])))
    return out


def _assert_matches(got, want_sets, k):
    idx, valid = (np.asarray(x) for x in got)
    assert idx.shape == valid.shape == (len(want_sets), k)
    for r, want in enumerate(want_sets):
        n = len(want)
        assert valid[r, :n].all() and not valid[r, n:].any(), r
        np.testing.assert_array_equal(idx[r, :n], want, err_msg=f"row {r}")
        assert (idx[r, n:] == 0).all()


CASES = [  # (rows, T, k, n_sink, n_recent, kind of scores)
    (3, 700, 64, 0, 0, "normal"),
    (4, 513, 100, 4, 16, "ties"),
    (2, 1500, 200, 2, 32, "neg_inf"),
    (3, 300, 16, 1, 3, "normal"),
]


def _scores(rng, rows, t, kind):
    if kind == "ties":
        return rng.integers(-2, 3, (rows, t)).astype(np.float32)
    s = rng.standard_normal((rows, t)).astype(np.float32)
    if kind == "neg_inf":
        s[0, :] = -np.inf                      # a whole row of -inf
        s[1, rng.random(t) < 0.5] = -np.inf    # half -inf
    return s


def _case_inputs(case, dtype):
    rows, t, k, n_sink, n_recent, kind = case
    rng = np.random.default_rng(abs(hash((case, str(dtype)))) % 2**32)
    s = jnp.asarray(_scores(rng, rows, t, kind), dtype)
    # full length, shorter than K, shorter than sinks+window, random lengths < T
    lengths = np.array([t, k // 2, 3, *rng.integers(1, t, rows)][:rows], np.int32)
    want = _exact(np.asarray(s.astype(jnp.float32)), k, lengths, n_sink, n_recent)
    return s, jnp.asarray(lengths), want


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", ["sampled", "radix"])
@pytest.mark.parametrize("interpret", KERNEL_MODES)
def test_topk_select_exact(case, dtype, method, interpret):
    s, lengths, want = _case_inputs(case, dtype)
    _, _, k, n_sink, n_recent, _ = case
    got = topk_select(s, k, lengths, n_sink=n_sink, n_recent=n_recent, implementation="pallas",
                      interpret=interpret, method=method)
    _assert_matches(got, want, k)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_topk_select_xla_exact(case, dtype):
    s, lengths, want = _case_inputs(case, dtype)
    _, _, k, n_sink, n_recent, _ = case
    got = topk_select(s, k, lengths, n_sink=n_sink, n_recent=n_recent, implementation="xla")
    _assert_matches(got, want, k)


def _hard_scores(rng, rows: int, t: int, k: int, kind: str) -> np.ndarray:
    s = rng.standard_normal((rows, t)).astype(np.float32)
    if kind == "ties_at_threshold":  # K - 50 clear winners, then 300 equal scores spread out
        s = rng.uniform(-1.0, 0.0, (rows, t)).astype(np.float32)
        for r in range(rows):
            perm = rng.permutation(t)
            s[r, perm[: k - 50]] = rng.uniform(2.0, 3.0, k - 50)
            s[r, perm[k - 50: k + 250]] = 1.5
    elif kind == "neg_inf":
        s[0] = -np.inf  # a whole row
        s[1, rng.random(t) < 0.97] = -np.inf  # fewer finite scores than K
    elif kind == "all_equal":
        s[:] = 0.25
        s[1] = -np.inf
    elif kind == "f32_low_bits":  # equal bf16 prefixes, order only in the low mantissa bits
        s = (1.0 + rng.integers(0, 1 << 16, (rows, t)) * 2.0**-23).astype(np.float32)
    return s


_ROWS, _T, _K = 5, 1800, 400
_LENGTHS = np.array([_T, 1500, _K // 2, _K, 5], np.int32)  # full, < K, == K, < sinks + window


@pytest.mark.parametrize("kind", ["normal", "ties_at_threshold", "neg_inf", "all_equal",
                                  "f32_low_bits"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("method", ["sampled", "radix"])
@pytest.mark.parametrize("interpret", KERNEL_MODES)
def test_topk_select_hard_rows(kind, dtype, method, interpret):
    """Ties at the threshold, -inf rows, all-equal rows, order in the low f32 bits only; rows:
    full, shorter than K, exactly K, shorter than the forced tokens (T not a block multiple)."""
    rng = np.random.default_rng(abs(hash((kind, str(dtype)))) % 2**32)
    s = jnp.asarray(_hard_scores(rng, _ROWS, _T, _K, kind), dtype)
    want = _exact(np.asarray(s.astype(jnp.float32)), _K, _LENGTHS, 3, 20)
    got = topk_select(s, _K, jnp.asarray(_LENGTHS), n_sink=3, n_recent=20,
                      implementation="pallas", interpret=interpret, method=method)
    _assert_matches(got, want, _K)


def test_reference_and_default_lengths():
    rng = np.random.default_rng(1)
    s = jnp.asarray(rng.integers(0, 4, (2, 400)).astype(np.float32))
    want = _exact(np.asarray(s), 50, np.array([400, 400]), 0, 0)
    _assert_matches(topk_select(s, 50, implementation="pallas", interpret=True), want, 50)
    _assert_matches(topk_select(s, 50, implementation="pallas", interpret=True,
                                method="radix"), want, 50)
    _assert_matches(topk_select_reference(s, 50), want, 50)


@pytest.mark.parametrize("kdtype", ["bf16", "int8"])
@pytest.mark.parametrize("interpret", KERNEL_MODES)
def test_score_and_select(kdtype, interpret):
    rng = np.random.default_rng(2)
    b, s, t, d, k = 2, 2, 600, 16, 40
    q = jnp.asarray(rng.standard_normal((b, s, d)), jnp.bfloat16)
    if kdtype == "int8":
        kimp = jnp.asarray(rng.integers(-127, 128, (b, s, t, d)), jnp.int8)
        scale = jnp.asarray(rng.uniform(0.5, 1.5, (b, s, t)), jnp.float32)
    else:
        kimp, scale = jnp.asarray(rng.standard_normal((b, s, t, d)), jnp.bfloat16), None
    lengths = jnp.asarray([t, 333], jnp.int32)
    got = score_and_select(q, kimp, lengths, k, k_scale=scale, n_sink=2, n_recent=8,
                           implementation="pallas", interpret=interpret)
    ref = score_and_select_reference(q, kimp, lengths, k, k_scale=scale, n_sink=2, n_recent=8)
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(r))
    scores = np.asarray(importance_scores(q, kimp, scale)).reshape(b * s, t)
    want = _exact(scores, k, np.repeat(np.asarray(lengths), s), 2, 8)
    _assert_matches(tuple(x.reshape(b * s, k) for x in got), want, k)


@pytest.mark.parametrize("group_reduce", ["max", "mean"])
def test_oracle_select(group_reduce):
    rng = np.random.default_rng(3)
    b, h, s, t, d, k = 1, 4, 2, 500, 8, 32
    q = jnp.asarray(rng.standard_normal((b, h, d)), jnp.float32)
    kc = jnp.asarray(rng.standard_normal((b, s, t, d)), jnp.bfloat16)
    lengths = jnp.asarray([450], jnp.int32)
    got = oracle_select(q, kc, lengths, k, group_reduce=group_reduce, n_recent=4,
                        implementation="pallas", interpret=True)
    logits = np.einsum("bsgd,bstd->bsgt", np.asarray(q).reshape(b, s, h // s, d),
                       np.asarray(kc.astype(jnp.float32))) / np.sqrt(d)
    red = logits.max(2) if group_reduce == "max" else logits.mean(2)
    np.testing.assert_allclose(np.asarray(oracle_logits(q, kc, group_reduce)), red, rtol=1e-5,
                               atol=1e-5)
    want = _exact(np.asarray(oracle_logits(q, kc, group_reduce)).reshape(b * s, t), k,
                  np.array([450, 450]), 0, 4)
    _assert_matches(tuple(x.reshape(b * s, k) for x in got), want, k)


def test_errors():
    s = jnp.zeros((2, 100), jnp.float32)
    with pytest.raises(ValueError, match="k must be"):
        topk_select(s, 101)
    with pytest.raises(ValueError, match="n_sink"):
        topk_select(s, 10, n_sink=8, n_recent=8)
    with pytest.raises(ValueError, match=r"\[R, T\]"):
        topk_select(jnp.zeros((100,)), 10)
    with pytest.raises(ValueError, match="lengths"):
        topk_select(s, 10, jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="implementation"):
        topk_select(s, 10, implementation="cuda")
    with pytest.raises(ValueError, match="group_reduce"):
        oracle_logits(jnp.zeros((1, 4, 8)), jnp.zeros((1, 2, 10, 8)), "sum")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("interpret", KERNEL_MODES)
def test_sampled_path_exact_when_taken(dtype, interpret):
    """The sampled bracket path alone: on normal scores every row takes it and is exact; on
    heavy ties the rows it accepts are exact and `topk_select` (sampled, with radix fallback;
    auto; radix) is exact everywhere."""
    rng = np.random.default_rng(4)
    rows, t, k = 4, 4096, 300
    lengths = np.array([t, 2000, 350, 280], np.int32)
    for kind in ("normal", "ties"):
        s = jnp.asarray(_scores(rng, rows, t, kind), dtype)
        want = _exact(np.asarray(s.astype(jnp.float32)), k, lengths, 2, 16)
        (idx, valid), ok = _sampled_select(s, jnp.asarray(lengths), k, n_sink=2, n_recent=16,
                                           interpret=interpret, plan=_plan(t, k))
        ok = np.asarray(ok)
        if kind == "normal":
            assert ok.all()
        for r in np.flatnonzero(ok):
            _assert_matches((idx[r:r + 1], valid[r:r + 1]), [want[r]], k)
        for method in ("auto", "sampled", "radix"):
            _assert_matches(topk_select(s, k, jnp.asarray(lengths), n_sink=2, n_recent=16,
                                        implementation="pallas", interpret=interpret,
                                        method=method),
                            want, k)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_topk_select_lowers_for_cuda(dtype):
    """The Pallas Triton lowering of the sampled select (radix fallback) at the decode shape, on any host (catches
    lowering errors that interpret mode cannot, e.g. a loop carry that is not a traced value)."""
    export = pytest.importorskip("jax.export")
    spec = jax.ShapeDtypeStruct((8, 131072), dtype)
    lengths = jax.ShapeDtypeStruct((8,), jnp.int32)
    fn = jax.jit(lambda s, n: topk_select(s, 8192, n, n_sink=4, n_recent=64,
                                          implementation="pallas", method="sampled"))
    exported = export.export(fn, platforms=["cuda"], disabled_checks=[
        export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(spec, lengths)
    assert exported.mlir_module().count("xla.gpu.triton") >= 6
    q = jax.ShapeDtypeStruct((1, 8, 16), jnp.bfloat16)
    kimp = jax.ShapeDtypeStruct((1, 8, 131072, 16), jnp.bfloat16)
    fn = jax.jit(lambda q, kk: importance_scores(q, kk, implementation="pallas"))
    export.export(fn, platforms=["cuda"], disabled_checks=[
        export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(q, kimp)


@pytest.mark.parametrize("kdtype", ["bf16", "int8"])
@pytest.mark.parametrize("interpret", KERNEL_MODES)
def test_pallas_scores_and_selection(kdtype, interpret):
    """The Pallas scorer (T a multiple of its 4096-token block) against the einsum, and
    score_and_select on it against exact top-K of its own scores."""
    rng = np.random.default_rng(5)
    b, s, t, d, k = 1, 2, 8192, 16, 300
    q = jnp.asarray(rng.standard_normal((b, s, d)), jnp.bfloat16)
    if kdtype == "int8":
        kimp = jnp.asarray(rng.integers(-127, 128, (b, s, t, d)), jnp.int8)
        scale = jnp.asarray(rng.uniform(0.5, 1.5, (b, s, t)), jnp.float32)
    else:
        kimp, scale = jnp.asarray(rng.standard_normal((b, s, t, d)), jnp.bfloat16), None
    scores = np.asarray(importance_scores(q, kimp, scale, implementation="pallas",
                                          interpret=interpret)).reshape(b * s, t)
    np.testing.assert_allclose(scores, np.asarray(importance_scores(q, kimp, scale)).reshape(
        b * s, t), rtol=1e-5, atol=1e-4)
    lengths = jnp.asarray([7000], jnp.int32)
    got = score_and_select(q, kimp, lengths, k, k_scale=scale, n_sink=2, n_recent=8,
                           implementation="pallas", interpret=interpret)
    want = _exact(scores, k, np.array([7000, 7000]), 2, 8)
    _assert_matches(tuple(x.reshape(b * s, k) for x in got), want, k)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("interpret", KERNEL_MODES)
def test_sampled_fallback_forced(dtype, interpret):
    """The sampled tokens score far above the rest: the bracket misses on every row with more
    than K valid tokens, and `topk_select` takes the radix path, exact."""
    rng = np.random.default_rng(7)
    rows, t, k = 4, 4096, 300
    lengths = np.array([t, 2000, 350, 280], np.int32)
    plan = _plan(t, k, sample=256)
    s = rng.standard_normal((rows, t)).astype(np.float32)
    for r, n in enumerate(lengths):
        pos = np.asarray(sample_positions(jnp.int32(n), plan)).ravel()
        s[r, pos[pos < n]] += 100.0
    s = jnp.asarray(s, dtype)
    _, ok = _sampled_select(s, jnp.asarray(lengths), k, n_sink=2, n_recent=16,
                            interpret=interpret, plan=plan)
    np.testing.assert_array_equal(np.asarray(ok), [False, False, False, True])
    want = _exact(np.asarray(s.astype(jnp.float32)), k, lengths, 2, 16)
    _assert_matches(topk_select(s, k, jnp.asarray(lengths), n_sink=2, n_recent=16,
                                implementation="pallas", interpret=interpret, method="sampled"),
                    want, k)
