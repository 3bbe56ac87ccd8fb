"""H2O and SnapKV: dense at a full budget, permanent eviction, attention over the alive set only,
the H2O budget, and H2O decode == H2O simulation (both run the same row-by-row rule)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from butler_jax.cache import init_cache
from butler_jax.config import ModelConfig
from butler_jax.decode import decode_step, generate, prefill
from butler_jax.models.llama import LlamaForCausalLM, init_params
from butler_jax.sparsity import DensePolicy, SparsityConfig, make_policy
from butler_jax.sparsity.simulate import simulated_logits as _simulated_logits

CFG = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2)
METHODS = ("h2o", "snapkv")
simulated_logits = jax.jit(_simulated_logits, static_argnames=("model", "policy"))


@pytest.fixture(scope="module")
def tiny():
    return LlamaForCausalLM(CFG), init_params(CFG, seed=1)


def policy(method, budget, granularity="kv", **kw):
    section = SparsityConfig(method=method, budget=budget, n_sink=2, granularity=granularity,
                             implementation="xla", sim_chunk=16, observation_window=4, pool_kernel=3, **kw)
    return make_policy(section, CFG)[0]


DENSE = DensePolicy(SparsityConfig(implementation="xla"))


@dataclass(frozen=True)
class Recorder:
    """Wraps a policy; its state also keeps each layer's last decode query and output."""

    inner: Any

    def init_state(self, params, batch, capacity):
        cfg = self.inner.cfg
        z = jnp.zeros((cfg.num_hidden_layers, batch, 1, cfg.num_attention_heads, cfg.resolved_head_dim), jnp.float32)
        return self.inner.init_state(params, batch, capacity), z, z

    def observe_prefill(self, params, layer, x, cache, lengths, state):
        return (self.inner.observe_prefill(params, layer, x, cache, lengths, state[0]),) + state[1:]

    def attend(self, params, layer, x, cache, state):
        out, inner, kept = self.inner.attend(params, layer, x, cache, state[0])
        recorded = state[1].at[layer].set(x.q.astype(jnp.float32)), state[2].at[layer].set(out.astype(jnp.float32))
        return out, (inner, *recorded), kept


def run_decode(model, params, prompt, feed, pol, capacity):
    """Prefill `prompt` [B, P] then teacher-force `feed` [B, S]; yields (logits, cache, state) per step."""
    pre = jax.jit(partial(prefill, model), static_argnames="policy")
    step = jax.jit(partial(decode_step, model), static_argnames="policy")
    b = prompt.shape[0]
    cache = init_cache(CFG, b, capacity)
    state = pol.init_state((), b, capacity)
    logits, cache, state = pre(params, jnp.asarray(prompt), jnp.full((b,), prompt.shape[1], jnp.int32), cache,
                               policy=pol, state=state)
    yield logits, cache, state
    for s in range(feed.shape[1]):
        logits, cache, state, _ = step(params, jnp.asarray(feed[:, s]), cache, policy=pol, state=state)
        yield logits, cache, state


@pytest.mark.parametrize("method", METHODS)
def test_full_budget_equals_dense_in_simulation(tiny, method):
    model, params = tiny
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 128, (2, 40)), jnp.int32)
    dense, _ = model.apply({"params": params}, tokens, jnp.broadcast_to(jnp.arange(40), tokens.shape))
    logits, stats = simulated_logits(model, params, tokens, policy(method, 64))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(dense), atol=1e-5, rtol=0)
    assert all(float(s.kept) == float(s.visible) for s in stats)


@pytest.mark.parametrize("method", METHODS)
def test_full_budget_equals_dense_in_generation(tiny, method):
    model, params = tiny
    rng = np.random.default_rng(1)
    prompt, feed = rng.integers(0, 128, (2, 12)), rng.integers(0, 128, (2, 20))
    sparse = run_decode(model, params, prompt, feed, policy(method, 64), 40)
    dense = run_decode(model, params, prompt, feed, DENSE, 40)
    for (a, *_), (b, *_) in zip(sparse, dense):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)


def reference_attention(q, k, v, alive):
    """numpy attention of q [B, 1, Hq, hd] over cache k/v [B, Hkv, T, hd] restricted to alive [B, Hs, T]."""
    b, _, hq, hd = q.shape
    hkv = k.shape[1]
    out = np.zeros((b, hq, hd))
    for r in range(b):
        for h in range(hq):
            mask = alive[r, h * alive.shape[1] // hq]
            logits = k[r, h // (hq // hkv)] @ q[r, 0, h] / np.sqrt(hd)
            p = np.where(mask, np.exp(logits - logits[mask].max()), 0.0)
            out[r, h] = (p / p.sum()) @ v[r, h // (hq // hkv)]
    return out


@pytest.mark.parametrize("method,granularity", [("h2o", "kv"), ("snapkv", "kv"), ("h2o", "query")])
def test_evicted_tokens_never_return(tiny, method, granularity):
    model, params = tiny
    rng = np.random.default_rng(2)
    budget, prompt_len, steps = 24, 40, 200
    prompt, feed = rng.integers(0, 128, (2, prompt_len)), rng.integers(0, 128, (2, steps))
    inner = policy(method, budget, granularity)
    prev_alive, prev_len = None, None
    for n, (_, cache, (state, qs, outs)) in enumerate(run_decode(model, params, prompt, feed, Recorder(inner), prompt_len + steps)):
        alive = np.asarray(state.alive)[inner.settings.dense_layers:]  # [L', B, Hs, C]
        length = np.asarray(cache.lengths)
        pos = np.arange(alive.shape[-1])
        assert not (alive & (pos >= length[None, :, None, None])).any()  # nothing beyond the written tokens
        if method == "h2o":
            assert (alive.sum(-1) <= budget).all()
            assert (alive.sum(-1) == min(budget, int(length[0]))).all()
        else:
            assert (alive[..., prompt_len:] == (pos[prompt_len:] < length[0])).all()  # every generated token kept
            assert (alive[..., :prompt_len].sum(-1) == budget - 1).all()  # + the first generated token = budget
        if prev_alive is not None:
            old = pos < prev_len[None, :, None, None]
            assert not (alive & ~prev_alive & old).any(), f"step {n}: an evicted token came back"
            for layer in range(inner.settings.dense_layers, CFG.num_hidden_layers):
                # this step's query sat at position prev_len: the cache then held tokens 0..prev_len
                ref = reference_attention(np.asarray(qs[layer]), np.asarray(cache.k[layer], np.float64),
                                          np.asarray(cache.v[layer], np.float64),
                                          alive[layer - inner.settings.dense_layers])
                np.testing.assert_allclose(np.asarray(outs[layer])[:, 0], ref, atol=2e-5)
        prev_alive, prev_len = alive, length
    evicted_once = ~prev_alive[..., :prompt_len]
    assert evicted_once.any()


def test_h2o_decode_matches_simulation(tiny):
    """From a one-token prompt, H2O decoding runs exactly the simulated row-by-row rule."""
    model, params = tiny
    tokens = np.random.default_rng(3).integers(0, 128, (1, 40))
    pol = policy("h2o", "fixed_50pc")  # a budget growing with the position
    sim, stats = simulated_logits(model, params, jnp.asarray(tokens), pol)
    dec = [np.asarray(l[0]) for l, *_ in run_decode(model, params, tokens[:, :1], tokens[:, 1:], pol, 40)]
    np.testing.assert_allclose(np.stack(dec), np.asarray(sim[0]), atol=2e-5)
    assert float(stats[-1].kept) < float(stats[-1].visible)


def test_snapkv_simulation_keeps_window_and_budget(tiny):
    model, params = tiny
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, 128, (2, 40)), jnp.int32)
    pol = policy("snapkv", 12)
    _, stats = simulated_logits(model, params, tokens, pol)
    t = 40
    kept_per_row = sum(min(12, i + 1) for i in range(t))
    for s in stats[pol.settings.dense_layers:]:
        assert float(s.kept) == 2 * CFG.num_key_value_heads * kept_per_row
        assert 0 < float(s.oracle_hits) <= float(s.oracle_kept)


@pytest.mark.parametrize("method", METHODS)
def test_generate(tiny, method):
    """The jitted while-loop generation at a full budget == dense (greedy)."""
    model, params = tiny
    prompt = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14]]
    out_s = generate(model, params, prompt, 16, policy=policy(method, 64))
    out_d = generate(model, params, prompt, 16, policy=DENSE)
    assert out_s.rows() == out_d.rows()


def test_prompt_column_sums_in_chunks_equal_the_whole_softmax():
    """H2O's prefill scores: chunked rows (scan, last chunk padded) = column sums of one causal softmax."""
    from butler_jax.attention import attention_logits, causal_mask, softmax_probs
    from butler_jax.models.llama import LayerInputs
    from butler_jax.sparsity.eviction import prompt_column_sums

    b, t, hq, hkv, d = 2, 37, 4, 2, 8
    kq, kk = jax.random.split(jax.random.PRNGKey(7))
    q = jax.random.normal(kq, (b, t, hq, d))
    k = jax.random.normal(kk, (b, t, hkv, d))
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    lengths = jnp.array([t, 23])
    x = LayerInputs(q, k, k, positions, None, None)
    keep = causal_mask(positions, positions, lengths) & (positions < lengths[:, None])[:, None, :, None]
    whole = softmax_probs(attention_logits(q, k), keep).sum(axis=2)
    for chunk in (8, 16, 64):
        np.testing.assert_allclose(prompt_column_sums(x, lengths, chunk), whole, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(whole[1, :, 23:]).max()) == 0.0
