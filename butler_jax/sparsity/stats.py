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
    """keep / oracle_keep / visible: bool [..., T] of the same shape -> summed LayerStats."""
    f = jnp.float32
    return LayerStats(
        (keep & visible).sum(dtype=f), visible.sum(dtype=f),
        (keep & oracle_keep & visible).sum(dtype=f), (oracle_keep & visible).sum(dtype=f),
    )


def summarize(per_layer: list[LayerStats]) -> dict[str, list[float]]:
    """{'sparsity': [...], 'oracle_recall': [...]} per layer from accumulated sums."""
    sparsity, recall = [], []
    for s in per_layer:
        sparsity.append(float(1 - s.kept / jnp.maximum(s.visible, 1)))
        recall.append(float(s.oracle_hits / jnp.maximum(s.oracle_kept, 1)))
    return {"sparsity": sparsity, "oracle_recall": recall}
