"""Static-capacity KV cache pytree: prefill writes a prompt block, decode writes one token per row."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from butler_jax.config import ModelConfig


class CacheCapacityError(ValueError):
    """A prompt plus the requested new tokens does not fit the cache."""


class KVCache(NamedTuple):
    """k, v: one [B, Hkv, T, hd] array per layer (head-major, RoPE'd keys); lengths: [B] tokens per row.

    Separate per-layer buffers (not one [L, ...] array) let XLA read a layer's cache without
    slicing a copy out of a larger buffer, and update it in place inside the decode loop.
    """

    k: tuple[jnp.ndarray, ...]
    v: tuple[jnp.ndarray, ...]
    lengths: jnp.ndarray

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    def replace_layer(self, layer: int, k: jnp.ndarray, v: jnp.ndarray) -> "KVCache":
        """The cache with layer `layer`'s buffers replaced."""
        ks, vs = list(self.k), list(self.v)
        ks[layer], vs[layer] = k, v
        return self._replace(k=tuple(ks), v=tuple(vs))


def init_cache(cfg: ModelConfig, batch: int, capacity: int, dtype=None) -> KVCache:
    """An empty cache of `capacity` tokens per row, in the model dtype unless `dtype` is given."""
    dtype = dtype or (jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32)
    shape = (batch, cfg.num_key_value_heads, capacity, cfg.resolved_head_dim)
    layers = range(cfg.num_hidden_layers)
    return KVCache(tuple(jnp.zeros(shape, dtype) for _ in layers), tuple(jnp.zeros(shape, dtype) for _ in layers),
                   jnp.zeros((batch,), jnp.int32))


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
    """Write a prompt block [B, T, Hkv, hd] at positions 0..T-1 of a layer buffer [B, Hkv, cap, hd]."""
    update = jnp.swapaxes(block, 1, 2).astype(cache_layer.dtype)
    return jax.lax.dynamic_update_slice(cache_layer, update, (0, 0, 0, 0))


def write_token(cache_layer: jnp.ndarray, token: jnp.ndarray, positions: jnp.ndarray) -> jnp.ndarray:
    """Write one token per row, token [B, 1, Hkv, hd] at positions [B], into [B, Hkv, cap, hd] (in place)."""
    rows = jnp.arange(cache_layer.shape[0])
    return cache_layer.at[rows, :, positions].set(token[:, 0].astype(cache_layer.dtype))
