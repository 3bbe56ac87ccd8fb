"""Per-layer selection statistics: effective sparsity, mean kept tokens and recall of the Oracle's top-K.

The reports read `summarize` (per layer) or `sparse_layer_means` (one number per record, over
the layers that select): `sparsity` = 1 - kept / visible keys, `kept_tokens` = kept keys per
(query row, selection head), `oracle_recall` = kept keys the Oracle also keeps / the Oracle's.
Decode-simulated passes count `layer_stats` per query row and `pool_rows` sums the rows of a
sequence (its real rows when right-padded); real decode steps count `keys_read` per layer
(`Policy.attend`) and `decode_means` pools those counts the same way (no Oracle there).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np


class LayerStats(NamedTuple):
    """Counts of one layer: per (sequence, query row) int32 [B, T] from a simulated pass
    (`layer_stats`), or their f32 sums over rows (`pool_rows`; divide those to get rates)."""

    kept: jnp.ndarray  # kept (attended) keys
    visible: jnp.ndarray  # causally visible keys
    oracle_hits: jnp.ndarray  # kept keys that the Oracle also keeps
    oracle_kept: jnp.ndarray  # keys the Oracle keeps
    queries: jnp.ndarray  # (query row, selection head) pairs

    def __add__(self, other: "LayerStats") -> "LayerStats":  # type: ignore[override]
        return LayerStats(*(a + b for a, b in zip(self, other)))


def layer_stats(keep: jnp.ndarray, oracle_keep: jnp.ndarray, visible: jnp.ndarray) -> LayerStats:
    """keep / oracle_keep: bool [B, H, Tq, T]; visible: bool [B, 1 or H, Tq, T] -> per-row LayerStats,
    int32 [B, Tq] (summed over heads and keys; `visible` is counted once and multiplied by the heads)."""
    i, heads = jnp.int32, keep.shape[1]
    rows = lambda mask: mask.sum((1, 3), dtype=i)  # noqa: E731
    return LayerStats(rows(keep & visible), rows(visible) * (heads // visible.shape[1]),
                      rows(keep & oracle_keep & visible), rows(oracle_keep & visible),
                      jnp.full((keep.shape[0], keep.shape[2]), heads, i))


def concat_rows(parts: Sequence[LayerStats]) -> LayerStats:
    """Per-row LayerStats of consecutive row blocks [B, Tq_i] -> one [B, sum Tq_i]."""
    return LayerStats(*(jnp.concatenate(field, axis=1) for field in zip(*parts)))


def pool_rows(stats: LayerStats, rows: jnp.ndarray | None = None) -> LayerStats:
    """Per-row counts [B, T] summed over the rows where `rows` (bool [B, T]) holds -> f32 [B] per
    sequence; rows None: over every row and sequence -> f32 scalars. Exact int32 sums, then cast."""
    if rows is None:
        return LayerStats(*(field.sum(dtype=jnp.int32).astype(jnp.float32) for field in stats))
    return LayerStats(*(jnp.where(rows, field, 0).sum(-1, dtype=jnp.int32).astype(jnp.float32) for field in stats))


def sequence_stats(per_layer: Sequence[LayerStats], b: int) -> list[LayerStats]:
    """Sequence b's part of per-layer `pool_rows(..., rows)` sums (fields [B]) -> scalar fields."""
    return [LayerStats(*(field[b] for field in s)) for s in per_layer]


def summarize(per_layer: list[LayerStats]) -> dict[str, list[float]]:
    """{'sparsity': [...], 'kept_tokens': [...], 'oracle_recall': [...]} per layer from accumulated sums."""
    out: dict[str, list[float]] = {"sparsity": [], "kept_tokens": [], "oracle_recall": []}
    for s in per_layer:
        out["sparsity"].append(float(1 - s.kept / max(float(s.visible), 1.0)))
        out["kept_tokens"].append(float(s.kept / max(float(s.queries), 1.0)))
        out["oracle_recall"].append(float(s.oracle_hits / max(float(s.oracle_kept), 1.0)))
    return out


def sparse_layer_means(per_layer: list[LayerStats], dense_layers: int) -> dict[str, float]:
    """Measured `sparsity`, `kept_tokens` and `oracle_recall` pooled over layers >= dense_layers
    (sums of the layers divided, so every key counts once); all layers when none select."""
    layers = list(per_layer[dense_layers:]) or list(per_layer)
    total = sum(layers[1:], layers[0])
    return {k: v[0] for k, v in summarize([total]).items()}


def keys_read(valid: jnp.ndarray) -> jnp.ndarray:
    """Keys one decode query attends at a layer, per selection head: the valid entries of its
    index list or mask, valid bool [B, Hsel, K or T] -> f32 [B] (mean over the selection heads)."""
    return valid.sum(-1, dtype=jnp.int32).astype(jnp.float32).mean(-1)


def decode_means(kept: np.ndarray, visible: np.ndarray, dense_layers: int) -> dict[str, float | list[float] | None]:
    """Measured `sparsity` and `kept_tokens` of S decode steps of one row, pooled over layers >=
    dense_layers as `sparse_layer_means` pools a simulated pass, plus their per-layer lists
    (`layer_sparsity`, `layer_kept_tokens`). kept: [S, L] keys read per selection head at each
    step and layer (`keys_read`); visible: [S] keys the step's query could see (position + 1).
    No step (S = 0): every value None (not measured)."""
    kept, visible = np.asarray(kept, np.float64), np.asarray(visible, np.float64)
    if kept.shape[0] == 0:
        return {"sparsity": None, "kept_tokens": None, "layer_sparsity": None, "layer_kept_tokens": None}
    zero, steps = np.float64(0), np.float64(kept.shape[0])
    per_layer = [LayerStats(layer.sum(), visible.sum(), zero, zero, steps) for layer in kept.T]
    pooled, lists = sparse_layer_means(per_layer, dense_layers), summarize(per_layer)
    return {"sparsity": pooled["sparsity"], "kept_tokens": pooled["kept_tokens"],
            "layer_sparsity": lists["sparsity"], "layer_kept_tokens": lists["kept_tokens"]}
