"""Co-reference batching: right-padded, batched records equal the one-sample unpadded ones (tiny random model)."""

from __future__ import annotations

from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

from butler_jax.eval.tasks_generation import TaskSample, evaluate_coref
from butler_jax.sparsity import SparsityConfig
from butler_jax.sparsity.simulate import simulated_predictions
from tests.test_policies import CFG, policy_for, tiny  # noqa: F401 (fixture)

LENGTHS = (21, 30)
BATCH, WIDTH = 3, 48  # one padded row (a repeat of the last sample) and 18+ padded tokens per sample


def _samples() -> list[TaskSample]:
    rng = np.random.default_rng(3)
    return [TaskSample(f"c{i}", SimpleNamespace(token_ids=rng.integers(0, CFG.vocab_size, n).astype(np.int32),
                                                final_name_span=(n - 4, n))) for i, n in enumerate(LENGTHS)]


@pytest.mark.parametrize("method", ["dense", "tokenbutler", "oracle", "h2o", "quest"])
def test_padded_batched_coref_equals_one_sample_unpadded(tiny, method):  # noqa: F811
    model, params = tiny
    policy, pp = policy_for(SparsityConfig(method=method, budget="fixed_50pc", n_sink=2, n_window=2, sim_chunk=16,
                                           page_size=4))
    items = _samples()
    alone = [evaluate_coref(model, params, policy, pp, [item], batch=1, width=n)[0] for item, n in zip(items, LENGTHS)]
    batched = evaluate_coref(model, params, policy, pp, items, batch=BATCH, width=WIDTH)
    assert batched == alone  # score, location_inaccuracy, sparsity, kept_tokens, oracle_recall
    if method == "dense":  # the statistics count each sample's own rows: mean visible keys (n + 1) / 2
        assert [r["kept_tokens"] for r in batched] == [(n + 1) / 2 for n in LENGTHS]
    else:
        assert all(0.3 < r["sparsity"] < 0.6 for r in batched)
    # every real row's prediction, not only the name's (the compiled shapes above are reused)
    tokens = np.zeros((BATCH, WIDTH), np.int32)
    for row, item in enumerate(items + items[-1:]):
        tokens[row, :len(item.payload.token_ids)] = item.payload.token_ids
    padded, _ = simulated_predictions(model, params, jnp.asarray(tokens), jnp.asarray([*LENGTHS, LENGTHS[-1]]),
                                      policy, pp)
    for row, (item, n) in enumerate(zip(items, LENGTHS)):
        one, _ = simulated_predictions(model, params, jnp.asarray(item.payload.token_ids[None]), jnp.asarray([n]),
                                       policy, pp)
        np.testing.assert_array_equal(np.asarray(padded)[row, :n], np.asarray(one)[0])


def test_coref_task_runs_one_shape_per_set(tiny, smollm2_tok):  # noqa: F811
    """build_tasks pads the co-reference set to its longest sample rounded up to 64 tokens, coref_batch rows."""
    from butler_jax.eval.cli import build_tasks
    from butler_jax.eval.config import EvalConfig

    model, params = tiny
    tasks = build_tasks(EvalConfig(methods=["dense"], tasks=["coref"], coref_samples=3, coref_batch=2), SparsityConfig(),
                        model, params, smollm2_tok)
    (_, samples, evaluate, _, batch, _), = tasks
    longest = max(len(s.payload.token_ids) for s in samples)
    assert batch == 2 and evaluate.keywords == {"batch": 2, "width": -(-longest // 64) * 64}
    with pytest.raises(ValueError, match="batch=2 x width"):
        evaluate(*policy_for(SparsityConfig()), samples)
