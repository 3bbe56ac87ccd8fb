"""Oracle: the exact top-K of the current query's true attention (the upper bound)."""

from __future__ import annotations

import jax.numpy as jnp

from butler_jax.attention import attention_logits, causal_mask
from butler_jax.sparsity.base import register
from butler_jax.sparsity.scored import ScoredPolicy
from butler_jax.sparsity.select import attention_mass


@register("oracle")
class OraclePolicy(ScoredPolicy):
    """Ranks tokens by their true attention probability over the visible tokens; per-KV-head
    selection sums the probabilities over the GQA group (the attention mass the group keeps), per
    query head this is the logit order."""

    def decode_scores(self, params, layer, x, cache, state):
        logits = attention_logits(x.q, cache.k[layer], kv_layout="bhtd")[:, :, 0]  # [B, Hq, T]
        visible = (jnp.arange(cache.capacity)[None, :] <= cache.lengths[:, None])[:, None]
        return attention_mass(logits, visible, self.cfg.num_key_value_heads, self.settings.granularity), state

    def simulated_scores(self, params, layer, x, rows, logits, carry):
        visible = causal_mask(x.positions[:, rows], x.positions)
        return attention_mass(logits, visible, self.cfg.num_key_value_heads, self.settings.granularity)
