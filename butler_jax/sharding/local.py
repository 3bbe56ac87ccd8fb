"""A device's part of a sharded decode, seen from inside `shard_map`.

`Shard` is static (axis names and sizes: a hashable field of a policy). Along the `seq` axis
device s holds the contiguous token range [s * Tl, (s + 1) * Tl) of every sequence buffer (KV
cache, importance keys, the paper predictor's own cache), Tl = the local capacity; along
`kv_heads` it holds a contiguous block of KV heads (and their query heads). Global positions stay
global everywhere (cache.lengths, query positions); only buffer indices are local.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from butler_jax.models.llama import LayerInputs
from butler_jax.sharding.mesh import HEADS, SEQ


@dataclass(frozen=True)
class Shard:
    """n_seq devices along the sequence, n_heads along the KV heads (mesh axes `seq_axis`, `head_axis`)."""

    n_seq: int
    n_heads: int = 1
    seq_axis: str = SEQ
    head_axis: str = HEADS

    def global_capacity(self, local_capacity: int) -> int:
        return local_capacity * self.n_seq

    def offset(self, local_capacity: int) -> jnp.ndarray:
        """Global position of this device's first buffer slot (traced int32)."""
        if self.n_seq == 1:
            return jnp.int32(0)
        return jax.lax.axis_index(self.seq_axis).astype(jnp.int32) * local_capacity

    def positions(self, local_capacity: int) -> jnp.ndarray:
        """Global positions [Tl] of this device's buffer slots."""
        return self.offset(local_capacity) + jnp.arange(local_capacity, dtype=jnp.int32)

    def local_index(self, positions: jnp.ndarray, local_capacity: int) -> jnp.ndarray:
        """Global positions -> local slots; positions held by another device -> local_capacity (dropped by writes)."""
        local = positions - self.offset(local_capacity)
        return jnp.where((local >= 0) & (local < local_capacity), local, local_capacity)

    def write_rows(self, buf: jnp.ndarray, values: jnp.ndarray, positions: jnp.ndarray, axis: int) -> jnp.ndarray:
        """One token per batch row into buf [B, ..., Tl (at `axis`), ...] at global positions [B]; values:
        buf without its token axis. Only the device holding the position writes."""
        local = self.local_index(positions, buf.shape[axis])
        index = (jnp.arange(buf.shape[0]),) + (slice(None),) * (axis - 1) + (local,)
        return buf.at[index].set(values.astype(buf.dtype), mode="drop")

    def write_token(self, cache_layer: jnp.ndarray, token: jnp.ndarray, positions: jnp.ndarray) -> jnp.ndarray:
        """`cache.write_token` on a local cache layer [B, Hkv, Tl, hd]; token [B, 1, Hkv, hd]."""
        return self.write_rows(cache_layer, token[:, 0], positions, axis=2)

    def write_prefix(self, buf: jnp.ndarray, block: jnp.ndarray, axis: int) -> jnp.ndarray:
        """A prompt block (buf's layout, P tokens at `axis`) written at global positions 0..P-1."""
        tl, p = buf.shape[axis], block.shape[axis]
        pos = self.positions(tl)
        taken = jnp.take(block, jnp.clip(pos, 0, p - 1), axis=axis).astype(buf.dtype)
        inside = (pos < p).reshape((1,) * axis + (tl,) + (1,) * (buf.ndim - axis - 1))
        return jnp.where(inside, taken, buf)

    def write_block(self, cache_layer: jnp.ndarray, block: jnp.ndarray) -> jnp.ndarray:
        """`cache.write_block` on a local cache layer: block [B, P, Hkv, hd] at positions 0..P-1."""
        return self.write_prefix(cache_layer, jnp.swapaxes(block, 1, 2), axis=2)

    def pooled_keys(self, local: jnp.ndarray) -> jnp.ndarray:
        """Keys read per selection head [B] of the whole decode from this device's count [B] (its
        tokens, mean over its heads): summed over the sequence devices, averaged over head blocks
        (equal head counts each)."""
        total = local if self.n_seq == 1 else jax.lax.psum(local, self.seq_axis)
        return total if self.n_heads == 1 else jax.lax.pmean(total, self.head_axis)

    # --- KV-head blocks ------------------------------------------------------------------------
    def head_block(self, x: jnp.ndarray, axis: int) -> jnp.ndarray:
        """This device's contiguous block of heads of x along `axis` (all heads when n_heads == 1)."""
        if self.n_heads == 1:
            return x
        n = x.shape[axis] // self.n_heads
        start = jax.lax.axis_index(self.head_axis) * n
        return jax.lax.dynamic_slice_in_dim(x, start, n, axis)

    def local_inputs(self, x: LayerInputs) -> LayerInputs:
        """A layer's inputs restricted to this device's heads (q, k, v: heads at axis 2)."""
        if self.n_heads == 1:
            return x
        return x._replace(q=self.head_block(x.q, 2), k=self.head_block(x.k, 2), v=self.head_block(x.v, 2))

    def all_heads(self, out: jnp.ndarray) -> jnp.ndarray:
        """Attention output of this device's query heads [B, T, Hq/M, hd] -> every head [B, T, Hq, hd]."""
        if self.n_heads == 1:
            return out
        return jax.lax.all_gather(out, self.head_axis, axis=2, tiled=True)
