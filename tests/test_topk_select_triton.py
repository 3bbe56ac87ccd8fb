"""topk_select's "histogram" method (kernels/topk_select_triton.py) against topk_select_reference.

Where JAX sees no GPU, this module turns Triton's interpreter on (TRITON_INTERPRET=1, before
triton is imported) and runs the same kernels and launch sequence (`select`) on CPU torch
tensors; rows of a few thousand tokens in chunks of 256-512, so every row spans several programs
and the per-chunk output offsets are exercised. On a GPU the compiled jax_triton path runs
(`@pytest.mark.gpu`) at the benchmark's size, 8 x 131072, K=8192.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from butler_jax.kernels.topk_select import topk_select, topk_select_reference
from tests.kernel_test_base import has_gpu

if "triton" not in sys.modules and not has_gpu():
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton")
torch = pytest.importorskip("torch")
tt = pytest.importorskip("butler_jax.kernels.topk_select_triton")

interpreter = pytest.mark.skipif(
    not triton.knobs.runtime.interpret,
    reason="Triton's interpreter is off (a GPU is visible or triton was imported before this "
           "module set TRITON_INTERPRET=1)")

CASES = [  # (rows, T, k, n_sink, n_recent, kind of scores, chunk)
    (6, 3000, 300, 4, 16, "normal", 512),
    (4, 2048, 700, 0, 0, "ties", 256),
    (3, 1500, 200, 2, 32, "neg_inf", 256),
    (3, 1024, 100, 1, 3, "equal", 256),
    (2, 777, 777, 0, 8, "normal", 256),  # K = T: everything valid is taken
]


def _scores(rng: np.random.Generator, rows: int, t: int, kind: str) -> np.ndarray:
    if kind == "ties":  # few distinct values: heavy ties at the threshold
        return rng.integers(-2, 3, (rows, t)).astype(np.float32)
    if kind == "equal":
        return np.full((rows, t), 0.5, np.float32)
    s = rng.standard_normal((rows, t)).astype(np.float32)
    if kind == "neg_inf":
        s[0, :] = -np.inf
        s[1, rng.random(t) < 0.5] = -np.inf
    return s


def _lengths(rng: np.random.Generator, rows: int, t: int, k: int) -> np.ndarray:
    """Full length, shorter than K, shorter than the forced tokens, past T, then random."""
    return np.array([t, k // 2, 3, t + 5, *rng.integers(1, t, rows)][:rows], np.int32)


def _to_torch(x: jax.Array):
    a = np.asarray(x)
    if x.dtype == jnp.bfloat16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def _check(got, scores, k, lengths, n_sink, n_recent) -> None:
    want = topk_select_reference(scores, k, lengths, n_sink=n_sink, n_recent=n_recent)
    for g, w, name in zip(got, want, ("indices", "valid")):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=name)


@interpreter
@pytest.mark.parametrize("bits", [8, 11, 16])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[5]}-T{c[1]}-k{c[2]}")
def test_histogram_select_interpreted(case, dtype, bits) -> None:
    rows, t, k, n_sink, n_recent, kind, chunk = case
    rng = np.random.default_rng(abs(hash((case, str(dtype), bits))) % 2**32)
    scores = jnp.asarray(_scores(rng, rows, t, kind), dtype)
    lengths = jnp.asarray(_lengths(rng, rows, t, k))
    p = tt.plan(t, k, dtype == jnp.bfloat16, chunk=chunk, bits=bits)
    assert p.n_chunk >= 3
    got = tt.select(tt.TorchLauncher(), _to_torch(scores), _to_torch(lengths), k, n_sink=n_sink,
                    n_recent=n_recent, sizes=p)
    _check([g.numpy() for g in got], scores, k, lengths, n_sink, n_recent)


_COMPILE = """
import json, jax.numpy as jnp
from butler_jax.kernels.topk_select_triton import compile_for_cuda
out = {}
for name, dt, rows, t, k, kw in [("f32", jnp.float32, 8, 131072, 8192, {}),
                                 ("f32_bits11", jnp.float32, 8, 131072, 8192, {"bits": 11}),
                                 ("bf16", jnp.bfloat16, 8, 131072, 8192, {}),
                                 ("small", jnp.float32, 3, 3000, 300, {"chunk": 512})]:
    ks = compile_for_cuda(rows, t, k, dt, n_sink=4, n_recent=64, **kw)
    out[name] = [[c.name, len(c.asm["cubin"])] for c in ks]
print(json.dumps(out))
"""


def test_kernels_compile_for_sm90() -> None:
    """The same kernels through Triton's compiler (which refuses some code the interpreter runs),
    to an sm_90 cubin with the bundled ptxas: no GPU needed. A fresh process: this one may run
    Triton's interpreter."""
    env = {n: v for n, v in os.environ.items() if n != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _COMPILE], cwd=Path(__file__).resolve().parents[1],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    passes = {"f32": 4, "f32_bits11": 3, "bf16": 2, "small": 4}
    for name, n_pass in passes.items():
        names = [n for n, _ in out[name]]
        assert names == ["_hist_kernel"] * n_pass + ["_emit_kernel"], (name, names)
        assert all(size > 0 for _, size in out[name]), out[name]


def test_plan_passes_and_errors() -> None:
    assert tt.plan(131072, 8192, False).n_pass == 4
    assert tt.plan(131072, 8192, False, bits=11).n_pass == 3
    assert tt.plan(131072, 8192, True).n_pass == 2
    p = tt.plan(131072, 8192, False)
    assert p.n_chunk * p.slots >= 8192 and p.n_chunk * p.chunk >= 131072
    with pytest.raises(ValueError, match="chunk must be a power of 2, got 1000"):
        tt.plan(4096, 100, False, chunk=1000)
    with pytest.raises(ValueError, match=r"bits must be in \[1, 16\].*got 17"):
        tt.plan(4096, 100, False, bits=17)


def test_histogram_has_no_interpret_mode() -> None:
    with pytest.raises(ValueError, match="method='histogram'.*interpret=False"):
        topk_select(jnp.zeros((1, 64)), 8, implementation="pallas", interpret=True,
                    method="histogram")


@pytest.mark.gpu
@pytest.mark.skipif(not has_gpu(), reason="compiled jax_triton path: needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_histogram_select_gpu(dtype) -> None:
    pytest.importorskip("jax_triton")
    rows, t, k, n_sink, n_recent = 8, 131072, 8192, 4, 64
    rng = np.random.default_rng(0)
    s = rng.standard_normal((rows, t)).astype(np.float32)
    s[1] = np.round(s[1])  # heavy ties at the threshold
    s[2] = -np.inf
    scores = jnp.asarray(s, dtype)
    lengths = jnp.asarray([t, k // 2, t, 5000, t - 1, 9000, t, 70000], jnp.int32)
    got = jax.jit(lambda x, n: topk_select(x, k, n, n_sink=n_sink, n_recent=n_recent,
                                           implementation="pallas", method="histogram"))(
        scores, lengths)
    _check(got, scores, k, lengths, n_sink, n_recent)
