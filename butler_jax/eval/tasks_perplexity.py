"""The perplexity task of evaluate.py: windows of a text, dense or decode-simulated sparse."""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from butler_jax.eval.perplexity import window_nll
from butler_jax.sparsity.dense import DensePolicy
from butler_jax.sparsity.simulate import simulated_window_nll
from butler_jax.sparsity.stats import summarize


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


def evaluate_window(model, params, policy, sample: PerplexitySample, dense_layers: int) -> dict:
    """NLL sum/count of one window, plus mean sparsity and Oracle recall over the sparse layers."""
    tokens = jnp.asarray(sample.tokens[None])
    if isinstance(policy, DensePolicy):
        nll, count = window_nll(model, params, tokens)
        return {"nll_sum": float(nll), "count": int(count), "sparsity": 0.0}
    nll, count, stats = simulated_window_nll(model, params, tokens, policy)
    per_layer = summarize(list(stats))
    sparse = slice(dense_layers, None)
    return {
        "nll_sum": float(nll), "count": int(count),
        "sparsity": float(np.mean(per_layer["sparsity"][sparse])),
        "oracle_recall": float(np.mean(per_layer["oracle_recall"][sparse])),
        "layer_sparsity": per_layer["sparsity"], "layer_oracle_recall": per_layer["oracle_recall"],
    }
