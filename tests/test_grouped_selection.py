"""Long-context TokenButler's grouped selection (one top-K per producer group) == the per-layer path."""

from __future__ import annotations

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from butler_jax.cache import init_cache
from butler_jax.config import ModelConfig, PredictorConfig
from butler_jax.decode import decode_step, generate, prefill
from butler_jax.models.llama import LlamaForCausalLM, init_params
from butler_jax.models.predictor_longctx import LongctxPredictor
from butler_jax.sharding.local import Shard
from butler_jax.sparsity import SparsityConfig, make_policy, parse_budget
from butler_jax.sparsity.select import decode_select

CFG = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=5,
                  num_attention_heads=4, num_key_value_heads=2)
PCFG = PredictorConfig(kind="longctx", dDash=8, intdim=16, producer_frequency=2)  # producers 0, 2: layers 1-2, 3-4


@pytest.fixture(scope="module")
def tiny():
    return LlamaForCausalLM(CFG), init_params(CFG, seed=1)


def longctx_policy(section: SparsityConfig, group: bool, recorder=None):
    """(policy, params) with a random long-context predictor; `recorder` (a list): record every select."""
    module = LongctxPredictor(PCFG, CFG)
    hd = CFG.hidden_size // CFG.num_attention_heads
    pparams = module.init(jax.random.PRNGKey(3), jnp.ones((1, 2, CFG.hidden_size)),
                          jnp.ones((1, 2, CFG.num_key_value_heads, hd)))["params"]
    policy, pp = make_policy(section, CFG, (module, pparams))
    policy = replace(policy, group_selection=group)
    if recorder is None:
        return policy, pp

    class Recording(type(policy)):
        def select(self, params, layer, x, cache, state):
            idx, ok, new_state = super().select(params, layer, x, cache, state)
            jax.debug.callback(lambda *a: recorder.append((layer, *map(np.asarray, a))), state.step, idx, ok)
            return idx, ok, new_state

    return Recording(policy.cfg, policy.settings, policy.module, group_selection=group), pp


def section(interval: int, nf: bool, budget: str = "8") -> SparsityConfig:
    return SparsityConfig(method="tokenbutler", budget=budget, n_sink=1, n_window=2, predict_interval=interval,
                          neighbor_fetch=nf)


def by_step_layer(records: list) -> dict:
    """{(step, layer): (indices, valid)} with the invalid slots zeroed."""
    return {(int(step), layer): (np.where(ok, idx, 0), ok) for layer, step, idx, ok in records}


@pytest.mark.parametrize("interval,nf,budget", [(1, False, "8"), (1, True, "8"), (4, False, "8"), (4, True, "8"),
                                                (1, False, "fixed_50pc"), (4, True, "fixed_50pc")])
def test_grouped_decode_equals_per_layer(tiny, interval, nf, budget) -> None:
    """Same tokens and, at every step and sparse layer, the same selection index for index."""
    model, params = tiny
    prompts = [list(np.random.default_rng(0).integers(0, 128, 21)), list(np.random.default_rng(1).integers(0, 128, 14))]
    runs = {}
    for group in (True, False):
        records = []
        policy, pp = longctx_policy(section(interval, nf, budget), group, records)
        assert (policy if interval == 1 else replace(policy, phase="predict")).grouped == group
        out = generate(model, params, prompts, 16, policy=policy, policy_params=pp)
        runs[group] = (out.tokens, by_step_layer(records))
    np.testing.assert_array_equal(runs[True][0], runs[False][0])
    grouped, per_layer = runs[True][1], runs[False][1]
    assert grouped.keys() == per_layer.keys() and len(grouped) == 15 * (CFG.num_hidden_layers - 1)
    for key in per_layer:
        for a, b in zip(grouped[key], per_layer[key]):
            np.testing.assert_array_equal(a, b, err_msg=str(key))


@pytest.mark.parametrize("interval", [1, 4])
def test_grouped_decode_runs_one_top_k_per_group(tiny, interval) -> None:
    """A traced decode step calls select_top once per producer group (2) instead of once per sparse layer (4)."""
    model, params = tiny
    calls = {}
    for group in (True, False):
        policy, pp = longctx_policy(section(interval, False), group)
        count = []

        class Counting(type(policy)):
            def select_top(self, *args):
                count.append(1)
                return super().select_top(*args)

        policy = Counting(policy.cfg, policy.settings, policy.module, group_selection=group)
        cache = init_cache(CFG, 1, 24)
        state = policy.init_state(pp, 1, 24)
        _, cache, state = prefill(model, params, jnp.ones((1, 8), jnp.int32), jnp.array([8]), cache, policy, state, pp)
        jax.eval_shape(lambda s: decode_step(model, params, jnp.ones((1,), jnp.int32), cache, policy, s, pp), state)
        calls[group] = len(count)
    assert calls == {True: 2, False: CFG.num_hidden_layers - 1}


def test_grouped_needs_a_forced_current_token() -> None:
    """No recent window (the current token's stale key could be chosen) or a lone select at i > 1:
    per layer; a sharded decode groups too (tests/test_sharded_decode.py checks it)."""
    assert not longctx_policy(replace(section(1, False), n_window=0), True)[0].grouped
    assert not longctx_policy(section(4, False), True)[0].grouped  # phase None: a lone select branches per layer
    policy = longctx_policy(section(4, False), True)[0]
    assert replace(policy, phase="predict").grouped and replace(policy, phase="reuse").grouped
    assert replace(policy, phase="predict", shard=Shard(2)).grouped  # sharded decode: grouped


@pytest.mark.parametrize("budget", ["8", "fixed_50pc"])
@pytest.mark.parametrize("n_sink,n_window", [(0, 1), (1, 2)])
def test_current_token_score_changes_no_selection(budget, n_sink, n_window) -> None:
    """The score at the query's own slot (stale at grouping time) cannot change the selection: it is
    forced in by the recent window whatever its value, and the other tokens fill the rest of the budget."""
    b, h, t = 3, 4, 40
    scores = jax.random.normal(jax.random.PRNGKey(0), (b, h, t))
    query_pos = jnp.array([5, 23, 39])
    bud = parse_budget(budget)
    k_max = bud.max_kept(t)
    ref = decode_select(scores, query_pos, bud, k_max, n_sink, n_window, "xla")
    rows = jnp.arange(b)
    for value in (jnp.inf, -jnp.inf, jnp.nan, 1e30, -1e30, 0.0):
        changed = scores.at[rows, :, query_pos].set(value)
        got = decode_select(changed, query_pos, bud, k_max, n_sink, n_window, "xla")
        for a, r in zip(got, ref):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(r), err_msg=str(value))
    idx, ok = map(np.asarray, ref)
    for r in range(b):
        for hh in range(h):
            assert int(query_pos[r]) in idx[r, hh][ok[r, hh]]
