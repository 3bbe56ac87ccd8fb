"""Decode-simulated prefill: one parallel pass where every query row attends only to the tokens
its policy would select at that position (the original's evaluation mode for perplexity).

`chunked_simulation` is the one chunked loop every policy's `simulate_layer` runs (rows in chunks
of `sim_chunk`: memory O(chunk x T)); the jitted entry points take the policy as a static
argument and its parameters as a traced one.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from butler_jax.attention import attention_logits, causal_mask, masked_attention
from butler_jax.models.llama import LayerInputs, LlamaForCausalLM
from butler_jax.sparsity.select import attention_mass, simulated_keep
from butler_jax.sparsity.stats import LayerStats, concat_rows, layer_stats, pool_rows

# keep_fn(rows, logits [B, Hq, Tq, T]) -> keep [B, Hsel, Tq, T] for those query rows; None: dense
KeepFn = Optional[Callable[[slice, jnp.ndarray], jnp.ndarray]]


def oracle_keep(logits: jnp.ndarray, q_pos: jnp.ndarray, k_pos: jnp.ndarray, num_kv_heads: int, sparsity) -> jnp.ndarray:
    """The Oracle's keep-mask [B, Hsel, Tq, T] for rows at q_pos [B, Tq] (logits [B, Hq, Tq, T])."""
    scores = attention_mass(logits, causal_mask(q_pos, k_pos), num_kv_heads, sparsity.granularity)
    return simulated_keep(scores, q_pos, sparsity.token_budget, sparsity.n_sink, sparsity.n_window)


def chunked_simulation(sparsity, x: LayerInputs, keep_fn: KeepFn) -> tuple[jnp.ndarray, LayerStats]:
    """Decode-simulated attention of all rows of x [B, T, ...] and its per-row statistics [B, T]
    against the Oracle (`sparsity`: the SparsityConfig; its budget also sizes the Oracle of the statistics)."""
    t, chunk, hq, hkv = x.q.shape[1], sparsity.sim_chunk, x.q.shape[2], x.k.shape[2]
    outs, stats = [], []
    for start in range(0, t, chunk):
        rows = slice(start, min(t, start + chunk))
        q_pos = x.positions[:, rows]
        logits = attention_logits(x.q[:, rows], x.k)
        causal = causal_mask(q_pos, x.positions)
        oracle = oracle_keep(logits, q_pos, x.positions, hkv, sparsity)
        keep = jnp.ones_like(oracle) if keep_fn is None else keep_fn(rows, logits)
        stats.append(layer_stats(keep, oracle, causal))
        keep_q = jnp.repeat(keep, hq // keep.shape[1], axis=1)
        outs.append(masked_attention(logits, keep_q & causal, x.v))
    return jnp.concatenate(outs, axis=1), concat_rows(stats)


def simulation_attend(policy, params):
    """An attention hook running `policy.simulate_layer`; carry = (policy carry, per-layer stats)."""

    def attend(layer: int, x: LayerInputs, carry):
        policy_carry, stats = carry
        out, policy_carry, layer_stats_ = policy.simulate_layer(params, layer, x, policy_carry)
        return out, (policy_carry, stats + (layer_stats_,))

    return attend


def simulated_pass(model: LlamaForCausalLM, params, tokens: jnp.ndarray, policy, policy_params: Any = ()
                   ) -> tuple[jnp.ndarray, tuple[LayerStats, ...]]:
    """Logits [B, T, V] of a decode-simulated pass over tokens [B, T], and per-layer per-row
    statistics (fields int32 [B, T]). Every row attends only to its causal past (each policy's
    selection of row i reads rows <= i), so right padding changes no earlier row."""
    model.cfg.check_context(tokens.shape[1], "decode simulation", cached=False)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    carry = (policy.init_simulation(policy_params, tokens.shape[0], tokens.shape[1]), ())
    logits, (_, stats) = model.apply({"params": params}, tokens, positions, simulation_attend(policy, policy_params), carry)
    return logits, stats


def simulated_logits(model: LlamaForCausalLM, params, tokens: jnp.ndarray, policy, policy_params: Any = ()
                     ) -> tuple[jnp.ndarray, tuple[LayerStats, ...]]:
    """Logits [B, T, V] of a decode-simulated pass over tokens [B, T], and per-layer statistics
    summed over every row and sequence (f32 scalar fields)."""
    logits, stats = simulated_pass(model, params, tokens, policy, policy_params)
    return logits, tuple(pool_rows(s) for s in stats)


@partial(jax.jit, static_argnames=("model", "policy"))
def simulated_window_nll(model: LlamaForCausalLM, params, tokens: jnp.ndarray, policy, policy_params: Any = ()
                         ) -> tuple[jnp.ndarray, tuple[LayerStats, ...]]:
    """(summed NLL of next-token prediction f32 [B] over the T - 1 predicted tokens, per-layer
    statistics of each window's rows, f32 fields [B]) of windows tokens [B, T]."""
    logits, stats = simulated_pass(model, params, tokens, policy, policy_params)
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    every = jnp.ones(tokens.shape, bool)
    return nll.sum(-1), tuple(pool_rows(s, every) for s in stats)


@partial(jax.jit, static_argnames=("model", "policy"))
def simulated_predictions(model: LlamaForCausalLM, params, tokens: jnp.ndarray, lengths: jnp.ndarray, policy,
                          policy_params: Any = ()) -> tuple[jnp.ndarray, tuple[LayerStats, ...]]:
    """(argmax next-token predictions int32 [B, T], per-layer statistics of each sequence's real
    rows, f32 fields [B]) of a decode-simulated pass over tokens [B, T], sequence b right-padded
    after its lengths[b] tokens (padding changes neither its first lengths[b] predictions nor its statistics)."""
    logits, stats = simulated_pass(model, params, tokens, policy, policy_params)
    real = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]
    return logits.argmax(-1).astype(jnp.int32), tuple(pool_rows(s, real) for s in stats)
