"""Dense attention: every cached token, every head (the baseline and the reference)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from butler_jax.sparsity.base import dense_layer, register
from butler_jax.sparsity.simulate import chunked_simulation

if TYPE_CHECKING:
    from butler_jax.sparsity import SparsityConfig


def _default_settings() -> "SparsityConfig":
    from butler_jax.sparsity import SparsityConfig

    return SparsityConfig()


@register("dense")
@dataclass(frozen=True)
class DensePolicy:
    """Attend to all tokens 0..position of each row; no state, no parameters. Its simulation
    statistics are measured like every policy's (sparsity 0, Oracle recall 1)."""

    settings: "SparsityConfig" = field(default_factory=_default_settings)
    shard: Any = field(default=None, kw_only=True)  # sharding.local.Shard in a sharded decode (sharding/decode.py)

    @classmethod
    def build(cls, sparsity, cfg, predictor=None):
        return cls(sparsity), ()

    def init_state(self, params, batch: int, capacity: int) -> Any:
        return ()

    def observe_prefill(self, params, layer, x, cache, lengths, state):
        return state

    def attend(self, params, layer, x, cache, state):
        out, kept = dense_layer(layer, x, cache, self.settings.implementation, self.shard)
        return out, state, kept

    def init_simulation(self, params, batch: int, length: int) -> Any:
        return ()

    def simulate_layer(self, params, layer, x, carry):
        out, stats = chunked_simulation(self.settings, x, None)
        return out, carry, stats
