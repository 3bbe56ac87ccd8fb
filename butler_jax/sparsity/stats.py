"""Per-layer selection statistics: effective sparsity and recall of the Oracle's top-K."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp


class LayerStats(NamedTuple):
    """Sums over rows and heads of one layer (divide to get rates)."""

    kept: jnp.ndarray  # kept (attended) keys
    visible: jnp.ndarray  # causally visible keys
    oracle_hits: jnp.ndarray  # kept keys that the Oracle also keeps
    oracle_kept: jnp.ndarray  # keys the Oracle keeps

    @staticmethod
    def zeros() -> "LayerStats":
        z = jnp.zeros((), jnp.float32)
        return LayerStats(z, z, z, z)

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
    )


def summarize(per_layer: list[LayerStats]) -> dict[str, list[float]]:
    """{'sparsity': [...], 'oracle_recall': [...]} per layer from accumulated sums."""
    sparsity, recall = [], []
    for s in per_layer:
        sparsity.append(float(1 - s.kept / jnp.maximum(s.visible, 1)))
        recall.append(float(s.oracle_hits / jnp.maximum(s.oracle_kept, 1)))
    return {"sparsity": sparsity, "oracle_recall": recall}
