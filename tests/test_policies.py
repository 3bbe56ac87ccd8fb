"""Selection policies: dense equivalence, exact Oracle top-K, decode == simulation, Quest(1) == Oracle."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from butler_jax.cache import init_cache
from butler_jax.config import ModelConfig, PredictorConfig
from butler_jax.decode import decode_step, generate, prefill
from butler_jax.models.llama import LlamaForCausalLM, init_params
from butler_jax.models.predictor import PaperPredictor, init_predictor
from butler_jax.sparsity import SparsityConfig, make_policy, parse_budget
from butler_jax.sparsity.budget import Budget
from butler_jax.sparsity.select import decode_select, indices_to_mask, simulated_keep
from butler_jax.sparsity.simulate import simulated_logits

CFG = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2)
SCORED = ("oracle", "quest", "streamingllm", "tokenbutler")
PCFG = PredictorConfig(dDash=8, intdim=32, attn_reduce_factor=2)


@pytest.fixture(scope="module")
def tiny():
    return LlamaForCausalLM(CFG), init_params(CFG, seed=1)


def policy_for(section: SparsityConfig, seed: int = 7):
    """make_policy with a random paper predictor for TokenButler -> (policy, policy params)."""
    return make_policy(section, CFG, (PaperPredictor(PCFG, CFG), init_predictor(PCFG, CFG, seed=seed)))


def teacher_forced_decode_logits(model, params, tokens: np.ndarray, policy) -> np.ndarray:
    """Logits of the real decode path fed `tokens` [1, T] one by one after a 1-token prefill
    (`policy`: (policy, policy params))."""
    policy, pp = policy
    t = tokens.shape[1]
    cache = init_cache(model.cfg, 1, t)
    state = policy.init_state(pp, 1, t)
    logits, cache, state = prefill(model, params, jnp.asarray(tokens[:, :1]), jnp.array([1]), cache, policy, state, pp)
    out = [np.asarray(logits[0])]
    step = jax.jit(lambda p, tok, c, s: decode_step(model, p, tok, c, policy, s, pp))
    for i in range(1, t):
        logits, cache, state, _ = step(params, jnp.asarray(tokens[:, i]), cache, state)
        out.append(np.asarray(logits[0]))
    return np.stack(out)


def test_budget_parsing() -> None:
    assert parse_budget("fixed_60pc") == Budget(keep_fraction=0.4)
    assert parse_budget("sparsity=0.6") == Budget(keep_fraction=0.4)
    assert parse_budget("keep=0.25") == Budget(keep_fraction=0.25)
    assert parse_budget(2048) == parse_budget("2048") == parse_budget("tokens=2048") == Budget(tokens=2048)
    with pytest.raises(ValueError, match="not understood"):
        parse_budget("half")


@pytest.mark.parametrize("spec", [0.3, "0.3", "30%"])
def test_budget_bare_fraction_is_ambiguous(spec) -> None:
    with pytest.raises(ValueError, match=r"ambiguous.*keep=0\.3.*sparsity=0\.3"):
        parse_budget(spec)


@pytest.mark.parametrize("spec", ["keep=0", "sparsity=1", "fixed_100pc", "tokens=0.5", 0, 2048.0, True])
def test_budget_out_of_range_rejected(spec) -> None:
    with pytest.raises(ValueError, match="budget"):
        parse_budget(spec)


@pytest.mark.parametrize("method", SCORED)
def test_full_budget_equals_dense(tiny, method) -> None:
    model, params = tiny
    tokens = np.random.default_rng(0).integers(0, 128, (1, 48))
    dense, _ = model.apply({"params": params}, jnp.asarray(tokens), jnp.arange(48)[None])
    policy = policy_for(SparsityConfig(method=method, budget="4096", n_sink=2, n_window=2, page_size=4))
    sim, _ = simulated_logits(model, params, jnp.asarray(tokens), *policy)
    assert np.abs(np.asarray(sim) - np.asarray(dense)).max() <= 1e-5
    dec = teacher_forced_decode_logits(model, params, tokens[:, :20], policy)
    assert np.abs(dec - np.asarray(dense[0, :20])).max() <= 1e-5


@pytest.mark.parametrize("n_sink,n_window", [(0, 0), (3, 5)])
def test_oracle_keeps_exact_topk_per_head(n_sink, n_window) -> None:
    rng = np.random.default_rng(n_sink)
    t = 40
    scores = rng.standard_normal((2, 3, t, t)).astype(np.float32)
    budget = Budget(keep_fraction=0.5)
    q_pos = np.broadcast_to(np.arange(t), (2, t))
    keep = np.asarray(simulated_keep(jnp.asarray(scores), jnp.asarray(q_pos), budget, n_sink, n_window))
    for b in range(2):
        for h in range(3):
            for i in range(t):
                k_i = math.ceil((i + 1) * 0.5)
                forced = {j for j in range(i + 1) if j < n_sink or j > i - n_window}
                forced = forced if len(forced) <= k_i else {i} & forced  # inside the budget, else the current token
                rest = [j for j in np.argsort(-scores[b, h, i, : i + 1], kind="stable") if j not in forced]
                expected = forced | set(rest[: max(k_i - len(forced), 0)])
                assert set(np.flatnonzero(keep[b, h, i])) == expected and len(expected) == k_i
    # the decode path picks the same set for a row too short for its forced tokens and the last row
    for row in (9, t - 1):
        idx, valid = decode_select(jnp.asarray(scores[:, :, row]), jnp.array([row, row]), budget, t, n_sink, n_window)
        assert (np.asarray(indices_to_mask(idx, valid, t)) == keep[:, :, row]).all()
    # a fixed token budget (the selection-kernel path) keeps the same set as the simulation
    fixed = Budget(tokens=13)
    keep = np.asarray(simulated_keep(jnp.asarray(scores), jnp.asarray(q_pos), fixed, n_sink, n_window))
    for row in (5, t - 1):
        idx, valid = decode_select(jnp.asarray(scores[:, :, row]), jnp.array([row, row]), fixed, 13, n_sink, n_window)
        assert (np.asarray(indices_to_mask(idx, valid, t)) == keep[:, :, row]).all()


def test_oracle_is_the_exact_top_k_where_the_forced_tokens_do_not_fit(tiny) -> None:
    """At 50 % with 4 sinks + 16 recent tokens, rows 1..37 cannot hold all 20 forced tokens: they
    keep the current token and the Oracle's own top-K of the rest (their logits equal the Oracle's
    with only the current token forced), so the attention sink is not traded for the recent
    window; from row 38 on all forced tokens count."""
    model, params = tiny
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 128, (1, 48)))

    def oracle_logits(n_sink: int, n_window: int) -> np.ndarray:
        section = SparsityConfig(method="oracle", budget="fixed_50pc", n_sink=n_sink, n_window=n_window)
        return np.asarray(simulated_logits(model, params, tokens, *policy_for(section))[0][0])

    forced, free = oracle_logits(4, 16), oracle_logits(0, 1)
    assert np.abs(forced[:38] - free[:38]).max() <= 1e-5
    assert np.abs(forced[38:] - free[38:]).max() > 1e-4


@pytest.mark.parametrize("method", SCORED)
def test_decode_and_simulation_select_the_same_tokens(tiny, method) -> None:
    model, params = tiny
    tokens = np.random.default_rng(5).integers(0, 128, (1, 40))
    policy = policy_for(SparsityConfig(method=method, budget="fixed_50pc", n_sink=2, n_window=3, page_size=4))
    sim, _ = simulated_logits(model, params, jnp.asarray(tokens), *policy)
    dec = teacher_forced_decode_logits(model, params, tokens, policy)
    dense, _ = model.apply({"params": params}, jnp.asarray(tokens), jnp.arange(40)[None])
    assert np.abs(dec - np.asarray(sim[0])).max() <= 1e-5
    assert np.abs(np.asarray(sim) - np.asarray(dense)).max() > 1e-3  # sparsity really changed something


def test_quest_with_page_size_one_equals_oracle(tiny) -> None:
    model, params = tiny
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 128, (1, 64)))
    # per query head both rank by q.k (per KV head Quest takes the group's max, the Oracle its attention mass)
    quest = make_policy(SparsityConfig(method="quest", budget="fixed_60pc", page_size=1, granularity="query"), CFG)
    oracle = make_policy(SparsityConfig(method="oracle", budget="fixed_60pc", granularity="query"), CFG)
    a, _ = simulated_logits(model, params, tokens, *quest)
    b, _ = simulated_logits(model, params, tokens, *oracle)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-6


def test_generation_runs_every_scored_policy_in_one_loop(tiny) -> None:
    model, params = tiny
    for method in SCORED:
        policy, pp = policy_for(SparsityConfig(method=method, budget=16, n_sink=2, n_window=2))
        rows = generate(model, params, [[1, 2, 3], [4, 5]], 12, policy=policy, policy_params=pp).rows()
        assert [len(r) for r in rows] == [12, 12]


def test_predict_interval_reuses_the_last_selection_between_predictions(tiny) -> None:
    """With interval 3, steps 2 and 3 keep step 1's selection (plus the moving window)."""
    model, params = tiny
    tokens = np.random.default_rng(9).integers(0, 128, (1, 30))
    every = policy_for(SparsityConfig(method="tokenbutler", budget=8, n_sink=1, n_window=2))
    sparse = policy_for(SparsityConfig(method="tokenbutler", budget=8, n_sink=1, n_window=2, predict_interval=3))
    a = teacher_forced_decode_logits(model, params, tokens, every)
    b = teacher_forced_decode_logits(model, params, tokens, sparse)
    assert np.abs(a[:8] - b[:8]).max() <= 1e-5  # the budget of 8 covers everything early on
    assert np.abs(a - b).max() > 1e-4  # later, reuse differs from fresh predictions
    state = sparse[0].init_state(sparse[1], 1, 30)
    assert len(state.previous) == CFG.num_hidden_layers


def test_longctx_tokenbutler_decode_equals_simulation(tiny) -> None:
    from butler_jax.models.predictor_longctx import LongctxPredictor, longctx_param_count

    model, params = tiny
    pcfg = PredictorConfig(kind="longctx", dDash=8, intdim=16, producer_frequency=2)
    module = LongctxPredictor(pcfg, CFG)
    pparams = module.init(jax.random.PRNGKey(3), jnp.ones((1, 2, CFG.hidden_size)), jnp.ones((1, 2, 2, 16)))["params"]
    assert sum(x.size for x in jax.tree_util.tree_leaves(pparams)) == longctx_param_count(pcfg, CFG)
    policy = make_policy(SparsityConfig(method="tokenbutler", budget="fixed_50pc", n_sink=1, n_window=2), CFG, (module, pparams))
    tokens = np.random.default_rng(4).integers(0, 128, (1, 36))
    sim, stats = simulated_logits(model, params, jnp.asarray(tokens), *policy)
    dec = teacher_forced_decode_logits(model, params, tokens, policy)
    assert np.abs(dec - np.asarray(sim[0])).max() <= 1e-5
    assert float(stats[2].kept) < float(stats[2].visible)


@pytest.mark.parametrize("budget", ["fixed_50pc", "12"])
def test_neighbor_fetch_decode_equals_simulation(tiny, budget) -> None:
    """Every simulated row is a prediction step: with interval 1 both paths expand the same selection."""
    model, params = tiny
    tokens = np.random.default_rng(6).integers(0, 128, (1, 40))
    section = dict(method="tokenbutler", budget=budget, n_sink=2, n_window=3)
    plain = policy_for(SparsityConfig(**section))
    wide = policy_for(SparsityConfig(**section, neighbor_fetch=True))
    sim, stats = simulated_logits(model, params, jnp.asarray(tokens), *wide)
    dec = teacher_forced_decode_logits(model, params, tokens, wide)
    assert np.abs(dec - np.asarray(sim[0])).max() <= 1e-5
    sim_plain, stats_plain = simulated_logits(model, params, jnp.asarray(tokens), *plain)
    assert np.abs(np.asarray(sim) - np.asarray(sim_plain)).max() > 1e-4
    assert float(stats[2].kept) > float(stats_plain[2].kept)
    assert float(stats[2].kept) < float(stats[2].visible)


@pytest.mark.parametrize("interval", [1, 4])
def test_neighbor_fetch_full_budget_equals_dense(tiny, interval) -> None:
    model, params = tiny
    tokens = np.random.default_rng(0).integers(0, 128, (1, 48))
    dense, _ = model.apply({"params": params}, jnp.asarray(tokens), jnp.arange(48)[None])
    policy = policy_for(SparsityConfig(method="tokenbutler", budget="4096", n_sink=2, n_window=2,
                                       predict_interval=interval, neighbor_fetch=True))
    sim, _ = simulated_logits(model, params, jnp.asarray(tokens), *policy)
    assert np.abs(np.asarray(sim) - np.asarray(dense)).max() <= 1e-5
    dec = teacher_forced_decode_logits(model, params, tokens[:, :20], policy)
    assert np.abs(dec - np.asarray(dense[0, :20])).max() <= 1e-5


def test_neighbor_fetch_widens_prediction_steps_and_reuse_keeps_them(tiny) -> None:
    """Interval 4: each prediction's list = its plain selection + the spec's neighbours (distinct,
    existing tokens); the reuse steps in between attend that widened list plus the new tokens."""
    from test_neighbors import spec_expand

    model, params = tiny
    t, n_sink, n_window = 32, 1, 2
    tokens = np.random.default_rng(9).integers(0, 128, (1, t))
    policy, pp = policy_for(SparsityConfig(method="tokenbutler", budget=10, n_sink=n_sink, n_window=n_window,
                                           predict_interval=4, neighbor_fetch=True))
    s = policy.settings
    assert policy.init_state(pp, 1, t).previous[1][0].shape == (1, CFG.num_key_value_heads, min(2 * 10, t))
    records = []

    class Recording(type(policy)):
        def select(self, params, layer, x, cache, state):
            idx, ok, new_state = super().select(params, layer, x, cache, state)
            scores, _ = self.decode_scores(params, layer, x, cache, state)
            plain = decode_select(scores, cache.lengths, s.token_budget, self.k_max(cache.capacity), n_sink, n_window,
                                  s.implementation)
            jax.debug.callback(lambda *a: records.append((layer, *map(np.asarray, a))), state.step, cache.lengths, idx, ok,
                               *plain)
            return idx, ok, new_state

    recording = Recording(policy.cfg, policy.settings, policy.module)
    teacher_forced_decode_logits(model, params, tokens, (recording, pp))
    assert len(records) == (t - 1) * (CFG.num_hidden_layers - s.dense_layers)
    last, grew = {}, 0
    for layer, step, lengths, idx, ok, plain, plain_ok in records:
        q = int(lengths[0])
        for h in range(idx.shape[1]):
            got = idx[0, h][ok[0, h]]
            assert len(set(got.tolist())) == len(got) and (got <= q).all()
            if (int(step) - 1) % 4 == 0:
                sel = plain[0, h][plain_ok[0, h]]
                end = q + 1 - n_window
                forced = {i for i in sel.tolist() if i < n_sink or i >= end}
                scored = sorted(set(sel.tolist()) - forced)
                assert set(got.tolist()) == forced | set(spec_expand(scored, end, len(scored)))
                grew += len(got) > len(sel)
                last[layer, h] = set(got.tolist()), q
            else:
                predicted, at = last[layer, h]
                assert set(got.tolist()) == predicted | set(range(at + 1, q + 1))
    assert grew > 0
