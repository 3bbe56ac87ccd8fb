"""bench/decode_latency's generation call: TokenButler's importance keys come in (random, as a
prefill would leave them), are the loop's state, and go back with the generated rows written."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bench.decode_latency import (Buffers, Method, importance_spec, init_predictor, load_settings, lower_decode,
                                  parse_args, random_cache, random_importance_keys)
from butler_jax.models.llama import init_params


def test_importance_keys_are_the_loops_state() -> None:
    s, model, predictor = load_settings(parse_args(["--smoke"]))
    params, pparams = jax.jit(lambda: init_params(s.cfg))(), init_predictor(s, predictor)
    batch, length, steps, capacity = 1, 96, 4, 128
    m = Method.parse("tokenbutler_i1")
    compiled = lower_decode(model, predictor, s, m, params, pparams, batch, capacity, steps).compile()
    keys = random_importance_keys(importance_spec(s, m, predictor, pparams, batch, capacity), jax.random.PRNGKey(3))
    before = [np.asarray(k, np.float32) for k in keys]
    assert all(np.std(b[..., :length, :]) > 0.5 for b in before)  # not the zeros of a fresh state
    buffers = Buffers(random_cache(s.cfg, batch, capacity, length, jax.random.PRNGKey(2)), keys)
    _, back = compiled(params, pparams, buffers, jnp.zeros((batch,), jnp.int32))
    after = [np.asarray(k, np.float32) for k in back.importance]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a[..., :length, :], b[..., :length, :])  # the given prefix, kept
        assert not np.array_equal(a[..., length, :], b[..., length, :])  # the first generated token's key, written
    assert int(back.cache.lengths[0]) == length  # reset, so calls can repeat


def test_dense_takes_no_importance_keys() -> None:
    s, model, predictor = load_settings(parse_args(["--smoke"]))
    params, pparams = jax.jit(lambda: init_params(s.cfg))(), init_predictor(s, predictor)
    compiled = lower_decode(model, predictor, s, Method.parse("dense"), params, pparams, 1, 64, 3).compile()
    _, back = compiled(params, pparams, Buffers(random_cache(s.cfg, 1, 64, 32, jax.random.PRNGKey(2))),
                       jnp.zeros((1,), jnp.int32))
    assert back.importance is None
