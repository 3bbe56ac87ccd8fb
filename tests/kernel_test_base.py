"""Kernel test base: each kernel case runs in Pallas interpret mode on the CPU and compiled on a
GPU (`@pytest.mark.gpu`, skipped without one), from one parametrization.

    @pytest.mark.parametrize("interpret", KERNEL_MODES)
    def test_x(interpret): kernel(..., implementation="pallas", interpret=interpret)

`pytest -m gpu` on a GPU machine runs the compiled cases only.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest


def has_gpu() -> bool:
    """Whether JAX sees a GPU backend."""
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


KERNEL_MODES = [
    pytest.param(True, id="interpret"),
    pytest.param(False, id="gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not has_gpu(), reason="compiled kernel case: needs a CUDA GPU")]),
]


def assert_close(out, ref, tol: float) -> None:
    """Same dtype, no NaN, |out - ref| <= tol (1 + |ref|) elementwise."""
    assert out.dtype == ref.dtype
    o, r = np.asarray(out, np.float32), np.asarray(ref, np.float32)
    assert not np.isnan(o).any()
    np.testing.assert_allclose(o, r, atol=tol, rtol=tol)
