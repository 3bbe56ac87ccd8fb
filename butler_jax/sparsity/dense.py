"""Dense attention: every cached token, every head (the baseline and the reference)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp

from butler_jax.cache import KVCache
from butler_jax.config import ModelConfig
from butler_jax.decode_attention import dense_attend
from butler_jax.models.llama import LayerInputs


@dataclass(frozen=True)
class DensePolicy:
    """Attend to all tokens 0..position of each row."""

    implementation: str = "auto"
    name: str = "dense"

    def init_state(self, cfg: ModelConfig, batch: int, capacity: int) -> Any:
        return ()

    def observe_prefill(self, layer: int, x: LayerInputs, cache: KVCache, lengths: jnp.ndarray, state: Any) -> Any:
        return state

    def attend(self, layer: int, x: LayerInputs, cache: KVCache, state: Any) -> tuple[jnp.ndarray, Any]:
        return dense_attend(x.q, cache.k[layer], cache.v[layer], cache.lengths + 1, self.implementation), state
