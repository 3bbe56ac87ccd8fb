"""The perplexity task of evaluate.py: windows of a text through the policy's decode-simulated pass
(dense included, so every record carries the same measured statistics)."""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from butler_jax.sparsity.simulate import simulated_window_nll
from butler_jax.sparsity.stats import sparse_layer_means, summarize


@dataclass(frozen=True)
class PerplexitySample:
    sample: str
    tokens: np.ndarray  # [T] int32


def perplexity_samples(token_ids: np.ndarray, context: int, windows: int) -> list[PerplexitySample]:
    """Non-overlapping windows of `context` tokens (at most `windows`)."""
    n = min(windows, len(token_ids) // context)
    if n == 0:
        raise ValueError(f"the perplexity text has {len(token_ids)} tokens, fewer than eval.ppl_context={context}")
    return [PerplexitySample(f"window{w}", np.asarray(token_ids[w * context:(w + 1) * context], np.int32)) for w in range(n)]


def evaluate_window(model, params, policy, policy_params, sample: PerplexitySample, dense_layers: int) -> dict:
    """NLL sum/count of one window, plus the measured sparsity, mean kept tokens per (row, head)
    and Oracle recall over the sparse layers (`stats.sparse_layer_means`), and their per-layer lists."""
    tokens = jnp.asarray(sample.tokens[None])
    nll, count, stats = simulated_window_nll(model, params, tokens, policy, policy_params)
    per_layer = summarize(list(stats))
    return {
        "nll_sum": float(nll), "count": int(count), **sparse_layer_means(list(stats), dense_layers),
        "layer_sparsity": per_layer["sparsity"], "layer_kept_tokens": per_layer["kept_tokens"],
        "layer_oracle_recall": per_layer["oracle_recall"],
    }
