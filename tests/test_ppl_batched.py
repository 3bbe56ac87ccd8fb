"""Perplexity batching: windows evaluated `ppl_batch` at a time (the last batch padded) give the
records of one window at a time (tiny random model)."""

from __future__ import annotations

import numpy as np
import pytest

from butler_jax.eval.tasks_perplexity import evaluate_windows, perplexity_samples
from butler_jax.sparsity import SparsityConfig
from tests.test_policies import CFG, policy_for, tiny  # noqa: F401 (fixture)

CONTEXT, WINDOWS, BATCH = 32, 3, 2  # two batches: the second holds one window and one repeat


@pytest.mark.parametrize("method", ["dense", "tokenbutler", "oracle", "snapkv", "quest"])
def test_batched_windows_equal_one_window_at_a_time(tiny, method):  # noqa: F811
    model, params = tiny
    policy, pp = policy_for(SparsityConfig(method=method, budget="fixed_50pc", n_sink=2, n_window=2, sim_chunk=16,
                                           page_size=4))
    ids = np.random.default_rng(5).integers(0, CFG.vocab_size, CONTEXT * WINDOWS + 7).astype(np.int32)
    windows = perplexity_samples(ids, CONTEXT, WINDOWS)
    alone = [evaluate_windows(model, params, policy, pp, [w], batch=1, dense_layers=1)[0] for w in windows]
    batched = [r for first in range(0, WINDOWS, BATCH)
               for r in evaluate_windows(model, params, policy, pp, windows[first:first + BATCH], batch=BATCH,
                                         dense_layers=1)]
    assert len(batched) == WINDOWS
    for a, b in zip(alone, batched):
        assert b["count"] == a["count"] == CONTEXT - 1
        assert b["nll_sum"] == pytest.approx(a["nll_sum"], rel=1e-5)
        assert {k: v for k, v in b.items() if k != "nll_sum"} == {k: v for k, v in a.items() if k != "nll_sum"}
    assert len({round(r["nll_sum"], 3) for r in batched}) == WINDOWS  # each window its own, not a repeat
    if method != "dense":
        assert all(0.3 < r["sparsity"] < 0.6 for r in batched)


def test_a_batch_of_mixed_or_too_many_windows_is_refused(tiny):  # noqa: F811
    model, params = tiny
    windows = perplexity_samples(np.arange(96, dtype=np.int32) % CFG.vocab_size, CONTEXT, 3)
    with pytest.raises(ValueError, match="batch=2"):
        evaluate_windows(model, params, *policy_for(SparsityConfig()), windows, batch=2, dense_layers=1)
