"""The selection benchmark's timing carry (`bench.select_topk.next_input`): it must not change what
is timed. Its old form zeroed a whole query head, which sent score_and_select to the radix fallback."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from bench.select_topk import next_input
from butler_jax.kernels.score_select import importance_scores
from butler_jax.kernels.topk_select import _plan, _sampled_select


def test_next_input_changes_only_the_first_element() -> None:
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((1, 8, 16)), jnp.bfloat16)
    out = jnp.asarray([[4, 7, 9]], jnp.int32)  # first index even -> 0
    new = np.asarray(next_input(q, out), np.float32)
    old = np.asarray(q, np.float32)
    assert new.reshape(-1)[0] == 0.0
    np.testing.assert_array_equal(new.reshape(-1)[1:], old.reshape(-1)[1:])


def test_a_zeroed_query_head_sends_its_row_to_the_fallback() -> None:
    """What the old carry did (q[:, 0] = 0, as the selection's first index is the sink 0): row 0's
    scores are all equal, the sampled bracket refuses it, so every timed call ran the radix path too;
    with `next_input` every row stays on the sampled path."""
    rng = np.random.default_rng(1)
    t, k, heads = 4096, 300, 2
    q = jnp.asarray(rng.standard_normal((1, heads, 16)), jnp.bfloat16)
    kimp = jnp.asarray(rng.standard_normal((1, heads, t, 16)), jnp.bfloat16)
    lengths = jnp.full((heads,), t, jnp.int32)

    def accepted(query):
        scores = importance_scores(query, kimp).reshape(heads, t)
        _, ok = _sampled_select(scores, lengths, k, n_sink=4, n_recent=64, interpret=True,
                                plan=_plan(t, k))
        return np.asarray(ok)

    np.testing.assert_array_equal(accepted(q.at[:, 0].set(0)), [False, True])
    assert accepted(next_input(q, jnp.zeros((1,), jnp.int32))).all()
