"""Static-capacity KV cache pytree: prefill writes a prompt block, decode writes one token per row."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from butler_jax.config import ModelConfig


class CacheCapacityError(ValueError):
    """A prompt plus the requested new tokens does not fit the cache."""


class KVCache(NamedTuple):
    """k, v: [L, B, Hkv, T, hd] (head-major, RoPE'd keys); lengths: [B] tokens written per row."""

    k: jnp.ndarray
    v: jnp.ndarray
    lengths: jnp.ndarray

    @property
    def capacity(self) -> int:
        return self.k.shape[3]


def init_cache(cfg: ModelConfig, batch: int, capacity: int, dtype=None) -> KVCache:
    """An empty cache of `capacity` tokens per row, in the model dtype unless `dtype` is given."""
    dtype = dtype or (jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32)
    shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, capacity, cfg.resolved_head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch,), jnp.int32))


def check_capacity(capacity: int, prompt_length: int, max_new_tokens: int) -> None:
    """Raise CacheCapacityError naming the numbers when prompt + new tokens exceed the capacity."""
    needed = prompt_length + max_new_tokens
    if needed > capacity:
        raise CacheCapacityError(
            f"prompt of {prompt_length} tokens + max_new_tokens={max_new_tokens} needs {needed} cache "
            f"slots but the cache holds {capacity}; raise the capacity (max_cache_len) or shorten "
            "the prompt / lower max_new_tokens"
        )


def write_block(cache_layer: jnp.ndarray, block: jnp.ndarray) -> jnp.ndarray:
    """Write a prompt block [B, T, Hkv, hd] at positions 0..T-1 of a layer [B, Hkv, cap, hd]."""
    return jax.lax.dynamic_update_slice(cache_layer, jnp.swapaxes(block, 1, 2).astype(cache_layer.dtype), (0, 0, 0, 0))


def write_token(cache_layer: jnp.ndarray, token: jnp.ndarray, positions: jnp.ndarray) -> jnp.ndarray:
    """Write one token per row, token [B, 1, Hkv, hd] at positions [B], into [B, Hkv, cap, hd]."""
    rows = jnp.arange(cache_layer.shape[0])
    return cache_layer.at[rows, :, positions].set(token[:, 0].astype(cache_layer.dtype))
