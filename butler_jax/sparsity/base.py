"""The selection-policy interface shared by every KV-sparsity method.

A policy decides, per layer and decode step, which cached tokens each head attends. It owns a
state pytree (H2O scores, the predictor's cache, an eviction mask, ...) created by `init_state`,
updated at the end of prefill by `observe_prefill`, and at every decode step by `attend`, which
returns the attention output for the step's query. Everything is a pure function of its
arguments, so the whole generation stays inside one `lax.while_loop`.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax.numpy as jnp

from butler_jax.cache import KVCache
from butler_jax.config import ModelConfig
from butler_jax.models.llama import LayerInputs


class Policy(Protocol):
    """What the decode loop needs from a token-selection method."""

    name: str

    def init_state(self, cfg: ModelConfig, batch: int, capacity: int) -> Any:
        """Initial policy state for a batch and cache capacity."""

    def observe_prefill(self, layer: int, x: LayerInputs, cache: KVCache, lengths: jnp.ndarray, state: Any) -> Any:
        """Update the state with layer `layer`'s prompt q/k/v (x: [B, P, ...]; lengths [B])."""

    def attend(self, layer: int, x: LayerInputs, cache: KVCache, state: Any) -> tuple[jnp.ndarray, Any]:
        """Attention output [B, 1, Hq, hd] for the step's query (x.q: [B, 1, Hq, hd]).

        `cache` already holds this step's key/value at position cache.lengths[b] (rows attend to
        tokens 0..cache.lengths[b] inclusive)."""
