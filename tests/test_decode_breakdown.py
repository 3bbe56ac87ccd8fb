"""bench/decode_breakdown's grouped TokenButler op runs what decode runs: its selection is the policy's."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from bench.decode_breakdown import REUSE_INTERVAL, Bench, parse_args, setup

CONTEXT, STEPS = 96, 3


@pytest.fixture(scope="module")
def bench() -> Bench:
    """The bench at toy shapes (configs/tiny.yaml: 4 layers, one producer group serving layers 1-3)."""
    args = parse_args(["--smoke", "--contexts", str(CONTEXT), "--budget", "24", "--n-sink", "2", "--n-window", "4",
                       "--steps", str(STEPS)])
    s, predictor, params, pparams, rot = setup(args)
    return Bench(s, predictor, params, pparams, 2, CONTEXT, CONTEXT + STEPS + 1, rot)


@pytest.mark.parametrize("nf", [False, True])
def test_group_op_selects_as_the_per_layer_policy(bench: Bench, nf: bool) -> None:
    """One iteration of the tb_group(_nf) op == the per-layer policy (group_selection=False, the path
    decode equals, tests/test_grouped_selection.py) on the same state and inputs, layer by layer."""
    op = bench.op_tb_group(nf)
    grouped = bench.tb_policy(REUSE_INTERVAL if nf else 1, nf)
    per_layer = dataclasses.replace(grouped, group_selection=False)
    assert grouped.grouped and not per_layer.grouped
    state, k, res, _ = op.carry
    pp, kc, vc = op.args
    got = jax.jit(op.step)(op.carry, *op.args)[3]  # the last rotated group's selections

    @jax.jit
    def reference(state):
        for producer, _ in bench.groups:
            state, sel = bench.group_step(per_layer, pp, producer, bench.layer_inputs(k=k, residual=res),
                                          bench.cache(kc, vc), state)
        return sel

    want = reference(state)
    assert len(got) == len(want) == len(bench.groups[-1][1])
    for (gi, go), (wi, wo) in zip(got, want):
        assert wo.any()
        np.testing.assert_array_equal(np.asarray(go), np.asarray(wo))
        np.testing.assert_array_equal(np.where(go, gi, 0), np.where(wo, wi, 0))
