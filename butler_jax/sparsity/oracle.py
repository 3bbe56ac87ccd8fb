"""Oracle: the exact top-K of the current query's true pre-softmax logits (the upper bound)."""

from __future__ import annotations

from butler_jax.attention import attention_logits
from butler_jax.sparsity.scored import ScoredPolicy


class OraclePolicy(ScoredPolicy):
    """Ranks tokens by q.k/sqrt(d) (max over the GQA group for per-KV-head selection)."""

    name = "oracle"

    def decode_scores(self, layer, x, cache, state):
        logits = attention_logits(x.q, cache.k[layer], kv_layout="bhtd")[:, :, 0]
        return self.reduce_heads(logits), state

    def simulated_scores(self, layer, x, rows, logits, carry):
        return self.reduce_heads(logits)
