"""Where the sequence buffers live on the mesh: NamedSharding of the KV cache and the predictor's
importance keys along the sequence (`seq` axis), their KV heads along `kv_heads`.

Layouts: cache layer k/v [B, Hkv, T, hd]; long-context importance keys [B, Hkv, T, d'];
paper predictor cache k/v [B, H, T, h_a] and importance keys [B, N, H, T, d'] (H query heads:
split over `kv_heads` too, the GQA groups staying whole).
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from butler_jax.cache import KVCache
from butler_jax.models.predictor import PredictorCache
from butler_jax.sharding.mesh import HEADS, SEQ

HEAD_MAJOR = P(None, HEADS, SEQ, None)  # [B, H, T, D]: cache layers, long-context importance keys


def cache_partition(num_layers: int) -> KVCache:
    """PartitionSpecs of a KVCache of `num_layers` layers (lengths replicated)."""
    return KVCache((HEAD_MAJOR,) * num_layers, (HEAD_MAJOR,) * num_layers, P())


def paper_cache_partition() -> PredictorCache:
    """PartitionSpecs of the paper predictor's own cache."""
    return PredictorCache(HEAD_MAJOR, HEAD_MAJOR, P(None, None, HEADS, SEQ, None))


def named(mesh: Mesh, specs):
    """A pytree of PartitionSpecs -> the same tree of NamedShardings on `mesh`."""
    return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, P))


def place_cache(cache: KVCache, mesh: Mesh) -> KVCache:
    """The cache moved onto the mesh, each device holding its token range (and KV heads)."""
    return jax.device_put(cache, named(mesh, cache_partition(len(cache.k))))
