"""Per-layer selection statistics: effective sparsity, mean kept tokens and recall of the Oracle's top-K.

The reports read `summarize` (per layer) or `sparse_layer_means` (one number per record, over
the layers that select): `sparsity` = 1 - kept / visible keys, `kept_tokens` = kept keys per
(query row, selection head), `oracle_recall` = kept keys the Oracle also keeps / the Oracle's.
Decode-simulated passes sum `layer_stats`; real decode steps count `keys_read` per layer
(`Policy.attend`) and `decode_means` pools those counts the same way (no Oracle there).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np


class LayerStats(NamedTuple):
    """Sums over rows and heads of one layer (divide to get rates)."""

    kept: jnp.ndarray  # kept (attended) keys
    visible: jnp.ndarray  # causally visible keys
    oracle_hits: jnp.ndarray  # kept keys that the Oracle also keeps
    oracle_kept: jnp.ndarray  # keys the Oracle keeps
    queries: jnp.ndarray  # (query row, selection head) pairs

    @staticmethod
    def zeros() -> "LayerStats":
        z = jnp.zeros((), jnp.float32)
        return LayerStats(z, z, z, z, z)

    def __add__(self, other: "LayerStats") -> "LayerStats":  # type: ignore[override]
        return LayerStats(*(a + b for a, b in zip(self, other)))


def layer_stats(keep: jnp.ndarray, oracle_keep: jnp.ndarray, visible: jnp.ndarray) -> LayerStats:
    """keep / oracle_keep: bool [B, H, Tq, T]; visible: bool [B, 1 or H, Tq, T] -> summed LayerStats.

    Counts are exact int32 sums (cast to float32 at the end); `visible` is counted once and
    multiplied by the heads rather than broadcast."""
    i = jnp.int32
    kept = (keep & visible).sum(dtype=i)
    return LayerStats(
        kept.astype(jnp.float32), (visible.sum(dtype=i) * (keep.shape[1] // visible.shape[1])).astype(jnp.float32),
        (keep & oracle_keep & visible).sum(dtype=i).astype(jnp.float32),
        (oracle_keep & visible).sum(dtype=i).astype(jnp.float32),
        jnp.float32(keep.shape[0] * keep.shape[1] * keep.shape[2]),
    )


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
