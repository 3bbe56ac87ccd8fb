"""Keys read by real decode steps (`GenerationResult.kept_tokens`): every policy's count equals an
independent count of what it attends (fixed budgets before and after the visible tokens reach them,
TokenButler's reuse steps above the budget, eviction), and dense reads every visible key."""

from __future__ import annotations

import numpy as np
import pytest

from butler_jax.config import ModelConfig, PredictorConfig
from butler_jax.decode import generate
from butler_jax.models.llama import LlamaForCausalLM, init_params
from butler_jax.models.predictor import PaperPredictor, init_predictor
from butler_jax.sparsity import SparsityConfig, make_policy

CFG = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2)
PCFG = PredictorConfig(dDash=8, intdim=32, attn_reduce_factor=2)
PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15]]  # 3 and 7 tokens: the budget of 6 is reached at different steps
NEW = 9
BUDGET = 6


@pytest.fixture(scope="module")
def tiny():
    return LlamaForCausalLM(CFG), init_params(CFG, seed=1)


def _kept(tiny, method: str, budget="6", **settings) -> np.ndarray:
    """GenerationResult.kept_tokens [B, NEW, L] of `method` (no stop token: every row runs NEW steps)."""
    model, params = tiny
    section = SparsityConfig(method=method, budget=str(budget), n_sink=2, n_window=1, implementation="xla", **settings)
    predictor = (PaperPredictor(PCFG, CFG), init_predictor(PCFG, CFG, seed=7)) if method == "tokenbutler" else None
    policy, pp = make_policy(section, CFG, predictor)
    result = generate(model, params, PROMPTS, NEW, policy=policy, policy_params=pp)
    assert result.kept_tokens.shape == (len(PROMPTS), NEW, CFG.num_hidden_layers)
    assert (result.kept_tokens[:, 0] == 0).all()  # token 0 comes from the prompt's dense pass
    return result.kept_tokens


def _visible(row: int) -> np.ndarray:
    """Keys the query of the step producing token j (j = 1..NEW-1) sees: prompt length + j."""
    return len(PROMPTS[row]) + np.arange(1, NEW)


def test_dense_reads_every_visible_key(tiny) -> None:
    kept = _kept(tiny, "dense")
    for row in range(len(PROMPTS)):
        np.testing.assert_array_equal(kept[row, 1:], np.repeat(_visible(row)[:, None], CFG.num_hidden_layers, 1))


@pytest.mark.parametrize("method", ["streamingllm", "oracle", "quest", "h2o"])
@pytest.mark.parametrize("granularity", ["kv", "query"])
def test_fixed_budget_reads_min_of_budget_and_visible(tiny, method, granularity) -> None:
    """Layer 0 dense (all visible), the others min(K, visible): below K in the early steps of the short row."""
    kept = _kept(tiny, method, granularity=granularity, page_size=4)
    for row in range(len(PROMPTS)):
        vis = _visible(row)
        np.testing.assert_array_equal(kept[row, 1:, 0], vis)
        for layer in (1, 2):
            np.testing.assert_array_equal(kept[row, 1:, layer], np.minimum(vis, BUDGET),
                                          err_msg=f"row {row} layer {layer}")
    assert (_visible(0) < BUDGET).any() and (_visible(0) > BUDGET).any()


def test_fraction_budget_reads_its_ceiling(tiny) -> None:
    kept = _kept(tiny, "streamingllm", budget="keep=0.5")
    for row in range(len(PROMPTS)):
        want = np.ceil(_visible(row) * 0.5)
        np.testing.assert_array_equal(kept[row, 1:, 1:], np.repeat(want[:, None], 2, 1))


def test_snapkv_keeps_every_generated_token(tiny) -> None:
    """The prompt compressed once to K(P + 1) - 1, then every generated token joins: K(P + 1) + j - 1 at step j."""
    kept = _kept(tiny, "snapkv")
    for row, prompt in enumerate(PROMPTS):
        first = min(BUDGET, len(prompt) + 1)
        np.testing.assert_array_equal(kept[row, 1:, 1:], np.repeat((first + np.arange(NEW - 1))[:, None], 2, 1))


def test_tokenbutler_reuse_steps_read_more_than_the_budget(tiny) -> None:
    """predict_interval 2: a prediction step (odd j) reads min(K, visible); the reuse step after it also
    reads the token written since: min(K, visible - 1) + 1, K + 1 once visible > K."""
    kept = _kept(tiny, "tokenbutler", predict_interval=2)
    for row in range(len(PROMPTS)):
        vis = _visible(row)
        j = np.arange(1, NEW)
        want = np.where(j % 2 == 1, np.minimum(vis, BUDGET), np.minimum(vis - 1, BUDGET) + 1)
        np.testing.assert_array_equal(kept[row, 1:, 1:], np.repeat(want[:, None], 2, 1))
    assert kept[:, 1:, 1:].max() == BUDGET + 1


def test_neighbour_fetch_reads_up_to_twice_the_budget(tiny) -> None:
    kept = _kept(tiny, "tokenbutler", neighbor_fetch=True)
    for row in range(len(PROMPTS)):
        vis = np.repeat(_visible(row)[:, None], 2, 1)
        sparse = kept[row, 1:, 1:]
        assert (sparse >= np.minimum(vis, BUDGET)).all() and (sparse <= np.minimum(vis, 2 * BUDGET)).all()
    assert kept[:, 1:, 1:].max() > BUDGET
