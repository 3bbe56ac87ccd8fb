"""Decode-simulated prefill: one parallel pass where every query row attends only to the tokens
its policy would select at that position (the original's evaluation mode for perplexity)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from butler_jax.models.llama import LayerInputs, LlamaForCausalLM
from butler_jax.sparsity.stats import LayerStats


def simulation_attend(policy):
    """An attention hook running `policy.simulate_layer`; carry = (policy carry, per-layer stats)."""

    def attend(layer: int, x: LayerInputs, carry):
        policy_carry, stats = carry
        out, policy_carry, layer_stats = policy.simulate_layer(layer, x, policy_carry)
        return out, (policy_carry, stats + (layer_stats,))

    return attend


@partial(jax.jit, static_argnames=("model", "policy"))
def simulated_window_nll(model: LlamaForCausalLM, params, tokens: jnp.ndarray, policy):
    """(summed NLL, count, per-layer LayerStats) of next-token prediction on windows tokens [B, T]."""
    model.cfg.check_context(tokens.shape[1], "decode simulation", cached=False)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    carry = (policy.init_simulation(tokens.shape[0], tokens.shape[1]), ())
    logits, (_, stats) = model.apply({"params": params}, tokens, positions, simulation_attend(policy), carry)
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return nll.sum(), nll.size, stats


def simulated_logits(model: LlamaForCausalLM, params, tokens: jnp.ndarray, policy) -> tuple[jnp.ndarray, tuple[LayerStats, ...]]:
    """Logits [B, T, V] of a decode-simulated pass, and per-layer statistics."""
    model.cfg.check_context(tokens.shape[1], "decode simulation", cached=False)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    carry = (policy.init_simulation(tokens.shape[0], tokens.shape[1]), ())
    logits, (_, stats) = model.apply({"params": params}, tokens, positions, simulation_attend(policy), carry)
    return logits, stats
