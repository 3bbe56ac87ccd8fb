"""The baselines at equal budgets: every method keeps exactly budget.kept(i + 1) tokens at row i
(sinks and window inside), Quest keeps the current token, SnapKV's row i never reads row i's
query, the per-KV-head Oracle ranks by the group's attention mass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from butler_jax.attention import attention_logits
from butler_jax.cache import KVCache
from butler_jax.config import ModelConfig, PredictorConfig
from butler_jax.models.llama import LayerInputs, LlamaForCausalLM, init_params
from butler_jax.models.predictor import PaperPredictor, init_predictor
from butler_jax.sparsity import METHODS, SparsityConfig, make_policy
from butler_jax.sparsity.budget import parse_budget
from butler_jax.sparsity.simulate import simulated_logits

CFG = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2)
PCFG = PredictorConfig(dDash=8, intdim=32, attn_reduce_factor=2)


def build(**section):
    return make_policy(SparsityConfig(implementation="xla", **section), CFG,
                       (PaperPredictor(PCFG, CFG), init_predictor(PCFG, CFG, seed=7)))


def layer_inputs(t: int, seed: int = 0) -> LayerInputs:
    r = jax.random.split(jax.random.PRNGKey(seed), 3)
    hd = CFG.resolved_head_dim
    q = jax.random.normal(r[0], (1, t, CFG.num_attention_heads, hd))
    k = jax.random.normal(r[1], (1, t, CFG.num_key_value_heads, hd))
    v = jax.random.normal(r[2], (1, t, CFG.num_key_value_heads, hd))
    z = jnp.zeros((1, t, CFG.hidden_size))
    return LayerInputs(q, k, v, jnp.arange(t)[None], z, z)


@pytest.mark.parametrize("budget,n_sink,n_window,window", [("fixed_50pc", 2, 3, 4), ("12", 2, 3, 4), ("4", 4, 2, 8)])
def test_every_method_keeps_the_same_number_of_tokens(budget, n_sink, n_window, window) -> None:
    """Sinks, windows (SnapKV's observation window, Quest's own page) all sit inside the budget,
    also when the budget is smaller than them (the last case)."""
    model, params = LlamaForCausalLM(CFG), init_params(CFG, seed=1)
    t, b = 40, 2
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 128, (b, t)))
    per_row = np.asarray(parse_budget(budget).kept(jnp.arange(1, t + 1)))
    counts = {}
    for method in METHODS:
        if method == "dense":
            continue
        policy, pp = build(method=method, budget=budget, n_sink=n_sink, n_window=n_window, observation_window=window,
                           page_size=4, sim_chunk=16)
        _, stats = simulated_logits(model, params, tokens, policy, pp)
        counts[method] = [float(s.kept) for s in stats[policy.settings.dense_layers:]]
        heads = CFG.num_key_value_heads
        assert all(float(s.queries) == b * heads * t for s in stats)
    expected = float(b * CFG.num_key_value_heads * per_row.sum())
    assert counts == {m: [expected] * (CFG.num_hidden_layers - 1) for m in counts}, counts


@pytest.mark.parametrize("path", ["decode", "simulation"])
def test_quest_keeps_the_current_token(path) -> None:
    """n_window = 0, page 16 and a budget smaller than the query's page: the current token stays."""
    policy, pp = build(method="quest", budget=3, n_sink=0, n_window=0, page_size=16)
    t = 48
    x = layer_inputs(t, seed=1)
    if path == "simulation":
        keep = np.asarray(policy.row_keep(pp, 1, x, slice(0, t), attention_logits(x.q, x.k), ()))  # [1, Hs, T, T]
        rows = np.arange(t)
        assert keep[0][:, rows, rows].all()
        assert (keep.sum(-1) == np.minimum(rows + 1, 3)).all()
        return
    for pos in (17, 21, 31, 47):  # offsets 1, 5, 15, 15 in their page
        k = jnp.swapaxes(x.k, 1, 2)  # [B, Hkv, T, hd]
        cache = KVCache((k, k), (k, k), jnp.asarray([pos]))
        q = x._replace(q=x.q[:, pos:pos + 1])
        idx, valid, _ = policy.select(pp, 1, q, cache, ())
        for h in range(idx.shape[1]):
            chosen = set(np.asarray(idx[0, h])[np.asarray(valid[0, h])].tolist())
            assert pos in chosen and len(chosen) == 3


def test_snapkv_row_i_never_reads_row_i_query() -> None:
    policy, pp = build(method="snapkv", budget="fixed_50pc", n_sink=1, observation_window=4, pool_kernel=3, sim_chunk=8)
    t = 32
    x = layer_inputs(t, seed=2)

    def keep(x, rows=slice(0, t)):
        return np.asarray(policy.row_keep(pp, 1, x, rows, attention_logits(x.q[:, rows], x.k)))

    base = keep(x)
    later_changed = False
    for i in (6, 13, 20, 31):
        other = 8.0 * jax.random.normal(jax.random.PRNGKey(i), x.q[:, i].shape)
        changed = keep(x._replace(q=x.q.at[:, i].set(other)))
        assert (changed[:, :, i] == base[:, :, i]).all()
        later_changed |= bool((changed[:, :, i + 1:] != base[:, :, i + 1:]).any())
    assert later_changed  # later rows do read row i (the check can fail)
    # a chunk starting mid-sequence reads the rows before it exactly like the whole pass
    assert (keep(x, slice(16, 24)) == base[:, :, 16:24]).all()


def test_kv_oracle_ranks_by_the_groups_attention_mass() -> None:
    policy, pp = build(method="oracle", budget=6, n_sink=0, n_window=0)
    t = 20
    x = layer_inputs(t, seed=3)
    keep = np.asarray(policy.row_keep(pp, 1, x, slice(0, t), attention_logits(x.q, x.k), ()))
    logits = np.asarray(attention_logits(x.q, x.k))[0]  # [Hq, T, T]
    g = CFG.num_attention_heads // CFG.num_key_value_heads
    for i in range(6, t):
        p = np.exp(logits[:, i, : i + 1] - logits[:, i, : i + 1].max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        mass = p.reshape(CFG.num_key_value_heads, g, -1).sum(1)
        for h in range(CFG.num_key_value_heads):
            assert set(np.flatnonzero(keep[0, h, i])) == set(np.argsort(-mass[h], kind="stable")[:6].tolist())
