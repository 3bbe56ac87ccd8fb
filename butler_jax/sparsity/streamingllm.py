"""StreamingLLM: attention sinks + the most recent tokens, nothing else."""

from __future__ import annotations

import jax.numpy as jnp

from butler_jax.sparsity.base import register
from butler_jax.sparsity.scored import ScoredPolicy


@register("streamingllm")
class StreamingLLMPolicy(ScoredPolicy):
    """Scores tokens by recency (the same for every head, so there is no group merge): the budget
    beyond the sinks goes to the latest tokens."""

    def _recency(self, shape) -> jnp.ndarray:
        hsel = self.cfg.num_key_value_heads if self.settings.granularity == "kv" else self.cfg.num_attention_heads
        return jnp.broadcast_to(jnp.arange(shape[-1], dtype=jnp.float32), (shape[0], hsel, *shape[2:-1], shape[-1]))

    def decode_scores(self, params, layer, x, cache, state):
        return self._recency((x.q.shape[0], 0, cache.capacity)), state

    def simulated_scores(self, params, layer, x, rows, logits, carry):
        return self._recency(logits.shape)
