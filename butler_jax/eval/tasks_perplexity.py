"""The perplexity task of evaluate.py: windows of a text through the policy's decode-simulated pass
(dense included, so every record carries the same measured statistics)."""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from butler_jax.sparsity.simulate import simulated_window_nll
from butler_jax.sparsity.stats import sequence_stats, sparse_layer_means, summarize


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


def evaluate_windows(model, params, policy, policy_params, items: list[PerplexitySample], *, batch: int,
                     dense_layers: int) -> list[dict]:
    """Per window: NLL sum/count, plus the measured sparsity, mean kept tokens per (row, head) and
    Oracle recall over the sparse layers (`stats.sparse_layer_means`), and their per-layer lists.

    Up to `batch` windows of one length go through one decode-simulated pass, padded to `batch`
    rows by repeating the last window, so a window set runs one compiled shape (rows are independent).
    """
    if not items or len(items) > batch or len({len(s.tokens) for s in items}) > 1:
        raise ValueError(f"{len(items)} perplexity windows of lengths {sorted({len(s.tokens) for s in items})} "
                         f"do not make one batch of at most batch={batch} windows of one length")
    rows = [s.tokens for s in items] + [items[-1].tokens] * (batch - len(items))
    nll, stats = simulated_window_nll(model, params, jnp.asarray(np.stack(rows)), policy, policy_params)
    nll = np.asarray(nll)
    records = []
    for row, sample in enumerate(items):
        per_layer = sequence_stats(stats, row)
        summary = summarize(per_layer)
        records.append({
            "nll_sum": float(nll[row]), "count": len(sample.tokens) - 1, **sparse_layer_means(per_layer, dense_layers),
            "layer_sparsity": summary["sparsity"], "layer_kept_tokens": summary["kept_tokens"],
            "layer_oracle_recall": summary["oracle_recall"],
        })
    return records
