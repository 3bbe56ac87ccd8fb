"""The policy contract: static hashable policies, traced predictor params (one compiled decode
program for any params, none of them baked in as constants), one registry, both protocol halves."""

from __future__ import annotations

import dataclasses
import re
import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from butler_jax.config import ModelConfig, PredictorConfig
from butler_jax.decode import _generate, generate
from butler_jax.eval.config import EvalConfig
from butler_jax.models.llama import LlamaForCausalLM, init_params
from butler_jax.models.predictor import PaperPredictor, init_predictor
from butler_jax.sampling import SamplingConfig
from butler_jax.sparsity import METHODS, POLICIES, SparsityConfig, make_policy
from butler_jax.sparsity.simulate import simulated_logits

CFG = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2)
# a predictor much larger than any constant the decode program needs (index ranges, masks)
PCFG = PredictorConfig(dDash=8, intdim=96, attn_reduce_factor=2)


@pytest.fixture(scope="module")
def tiny():
    return LlamaForCausalLM(CFG), init_params(CFG, seed=1)


def _predictor(seed: int):
    return PaperPredictor(PCFG, CFG), init_predictor(PCFG, CFG, seed=seed)


def _constant_sizes(hlo: str) -> list[int]:
    """Element counts of the non-scalar constants written out in a StableHLO module."""
    sizes = []
    for shape in re.findall(r"stablehlo\.constant dense<[^>]*> : tensor<([0-9x]+)x[a-z0-9]+>", hlo):
        sizes.append(int(np.prod([int(d) for d in shape.split("x")])))
    return sizes


def test_two_predictors_share_one_compiled_decode_program(tiny) -> None:
    model, params = tiny
    section = SparsityConfig(method="tokenbutler", budget=8, n_sink=1, n_window=2, implementation="xla")
    policy_a, params_a = make_policy(section, CFG, _predictor(1))
    policy_b, params_b = make_policy(section, CFG, _predictor(2))
    assert policy_a == policy_b and hash(policy_a) == hash(policy_b)
    prompts = [[3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]
    before = _generate._cache_size()
    out_a = generate(model, params, prompts, 6, policy=policy_a, policy_params=params_a).rows()
    after_first = _generate._cache_size()
    out_b = generate(model, params, prompts, 6, policy=policy_b, policy_params=params_b).rows()
    assert after_first == before + 1 and _generate._cache_size() == after_first  # b reused a's program
    # the params really are inputs: the same program, other params, other selections and tokens
    logits_a, _ = simulated_logits(model, params, jnp.asarray([prompts[0] * 4]), policy_a, params_a)
    logits_b, _ = simulated_logits(model, params, jnp.asarray([prompts[0] * 4]), policy_b, params_b)
    assert np.abs(np.asarray(logits_a) - np.asarray(logits_b)).max() > 1e-4
    assert len(out_a[0]) == len(out_b[0]) == 6

    tokens, lengths = jnp.asarray([prompts[0] + [0] * 54], jnp.int32), jnp.asarray([10], jnp.int32)
    hlo = _generate.lower(model, params, params_a, tokens, lengths, jax.random.PRNGKey(0), policy=policy_a,
                          max_new_tokens=6, sampling=SamplingConfig(), stop_tokens=(), capacity=70).as_text()
    leaves = jax.tree_util.tree_leaves(params_a)
    smallest_matrix = min(x.size for x in leaves if x.ndim == 2)
    sizes = _constant_sizes(hlo)
    assert max(sizes, default=0) < smallest_matrix, f"a constant of {max(sizes)} elements sits in the program"
    # the check can fail: closing over the params bakes them in
    baked = jax.jit(lambda p, t, n, k: _generate(model, p, params_a, t, n, k, policy=policy_a, max_new_tokens=6,
                                                   sampling=SamplingConfig(), stop_tokens=(), capacity=70))
    assert max(_constant_sizes(baked.lower(params, tokens, lengths, jax.random.PRNGKey(0)).as_text())) >= smallest_matrix


def test_one_registry_names_every_method() -> None:
    assert set(METHODS) == set(POLICIES)
    assert typing.get_args(typing.get_type_hints(SparsityConfig)["method"]) == METHODS
    assert tuple(EvalConfig().methods) == METHODS
    with pytest.raises(ValueError, match="unknown"):
        SparsityConfig(method="lru")


@pytest.mark.parametrize("method", METHODS)
def test_every_policy_has_both_halves_and_is_a_static_value(tiny, method) -> None:
    """Equal sections give equal (hashable) policies; decode and simulation run through the protocol;
    at a budget covering everything both equal dense attention."""
    model, params = tiny
    section = SparsityConfig(method=method, budget=4096, n_sink=1, n_window=1, implementation="xla")
    policy, pp = make_policy(section, CFG, _predictor(3))
    again, _ = make_policy(dataclasses.replace(section), CFG, _predictor(4))
    assert policy == again and hash(policy) == hash(again)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.settings = section  # type: ignore[misc]
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 128, (1, 24)))
    dense, _ = model.apply({"params": params}, tokens, jnp.arange(24)[None])
    sim, stats = simulated_logits(model, params, tokens, policy, pp)
    assert np.abs(np.asarray(sim) - np.asarray(dense)).max() <= 1e-5
    assert len(stats) == CFG.num_hidden_layers and all(float(s.kept) == float(s.visible) for s in stats)
    rows = generate(model, params, [[5, 6, 7]], 4, policy=policy, policy_params=pp).rows()
    assert rows == generate(model, params, [[5, 6, 7]], 4).rows()
