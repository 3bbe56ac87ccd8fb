"""Next-token sampling: greedy, temperature and nucleus (top-p)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from butler_jax.errors import ConfigError


@dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 means greedy; top_p < 1 keeps the smallest set of tokens with mass >= top_p."""

    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p} must be in (0, 1]")


def sample(logits: jnp.ndarray, key: jax.Array, cfg: SamplingConfig) -> jnp.ndarray:
    """Pick one token per row from logits [B, V] -> [B] int32."""
    if cfg.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits.astype(jnp.float32) / cfg.temperature
    if cfg.top_p < 1:
        order = jnp.argsort(-scaled, axis=-1)
        sorted_logits = jnp.take_along_axis(scaled, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        sorted_logits = jnp.where(mass_before < cfg.top_p, sorted_logits, -jnp.inf)
        choice = jax.random.categorical(key, sorted_logits, axis=-1)
        return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)
