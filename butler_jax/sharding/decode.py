"""The decode loop on a device mesh: `shard_map` of prefill + the `lax.while_loop` decode with
the cache (and the policy's sequence buffers) split along the sequence (and KV heads).

Every device runs the whole model on the step's token (weights replicated) and holds
[s * Tl, (s + 1) * Tl) of every sequence buffer; at each layer it attends to its own tokens
(dense) or to its part of the exact global selection (`select.py`), and the partial outputs are
merged by log-sum-exp (`attention.py`), so every device computes the same logits and samples the
same token. The policy is the one `make_policy` built, given a static `Shard` (`local.py`).
`butler_jax.decode.generate(..., mesh=MeshConfig(...))` comes here; without a mesh nothing here runs.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from butler_jax.cache import KVCache, init_cache
from butler_jax.config import ModelConfig
from butler_jax.errors import ConfigError
from butler_jax.sampling import sample
from butler_jax.sharding.local import Shard
from butler_jax.sharding.mesh import MeshConfig, on_mesh
from butler_jax.sharding.placement import cache_partition
from butler_jax.sparsity.base import Policy

SHARDED_METHODS = ("dense", "quest", "tokenbutler")
UNIT = 16  # a device's token range is a multiple of this (and of Quest's page size)


def local_model_config(cfg: ModelConfig, n_heads: int) -> ModelConfig:
    """The model config as one device of `n_heads` KV-head blocks sees it (its heads only)."""
    if n_heads == 1:
        return cfg
    return dataclasses.replace(cfg, num_attention_heads=cfg.num_attention_heads // n_heads,
                               num_key_value_heads=cfg.num_key_value_heads // n_heads, head_dim=cfg.resolved_head_dim)


def check_policy(policy: Policy, mesh: MeshConfig) -> None:
    """Raise ConfigError unless `policy` runs sharded on `mesh` (its name and settings)."""
    name = getattr(policy, "name", type(policy).__name__)
    if name not in SHARDED_METHODS:
        raise ConfigError(f"sharded decode supports sparsity.method in {list(SHARDED_METHODS)}", value=name,
                          fix="choose one of them or remove the mesh: section")
    s = policy.settings
    if name == "tokenbutler" and (s.predict_interval != 1 or s.neighbor_fetch):
        raise ConfigError("sharded TokenButler decode runs with predict_interval=1 and no neighbour fetch",
                          value=dict(predict_interval=s.predict_interval, neighbor_fetch=s.neighbor_fetch),
                          fix="set sparsity.predict_interval=1 sparsity.neighbor_fetch=false, or remove the mesh")
    if name == "tokenbutler" and mesh.kv_heads > 1:
        raise ConfigError("TokenButler shards along the sequence only (its predictor serves every head)",
                          value=f"mesh.kv_heads={mesh.kv_heads}", fix="set mesh.kv_heads=1 (mesh: {seq: N})")


def shard_policy(policy: Policy, cfg: ModelConfig, mesh: MeshConfig) -> tuple[Policy, Shard]:
    """(the policy as a device runs it, its Shard): the same hyperparameters with `shard` set (and
    the local head counts for a KV-head split)."""
    check_policy(policy, mesh)
    shard = Shard(mesh.seq, mesh.kv_heads)
    changes = dict(shard=shard)
    if hasattr(policy, "cfg"):
        changes["cfg"] = local_model_config(cfg, mesh.kv_heads)
    return dataclasses.replace(policy, **changes), shard


def local_capacity(capacity: int, mesh: MeshConfig, page_size: int = 1) -> int:
    """Tokens per device: capacity split over mesh.seq, rounded up to whole units (and Quest pages)."""
    unit = math.lcm(UNIT, page_size)
    return -(-capacity // (mesh.seq * unit)) * unit


def page_size(policy: Policy) -> int:
    """Quest's page (device ranges start on page boundaries); 1 for the other methods."""
    return policy.settings.page_size if getattr(policy, "name", "") == "quest" else 1


@partial(jax.jit, static_argnames=("model", "policy", "shard", "mesh", "max_new_tokens", "sampling", "stop_tokens",
                                   "capacity"))
def _generate_sharded(model, params, policy_params, tokens, lengths, key, *, policy, shard: Shard, mesh: Mesh,
                      max_new_tokens, sampling, stop_tokens, capacity):
    from butler_jax.decode import decode_loop, prefill

    def local(params, policy_params, tokens, lengths, key):
        batch = tokens.shape[0]
        cache = init_cache(local_model_config(model.cfg, shard.n_heads), batch, capacity)
        state = policy.init_state(policy_params, batch, capacity)
        logits, cache, state = prefill(model, params, tokens, lengths, cache, policy, state, policy_params, shard)
        key, sub = jax.random.split(key)
        first = sample(logits, sub, sampling)
        return decode_loop(model, params, first, cache, state, key, policy=policy, max_new_tokens=max_new_tokens,
                           sampling=sampling, stop_tokens=stop_tokens, policy_params=policy_params, shard=shard)

    return on_mesh(local, mesh, in_specs=(P(),) * 5, out_specs=(P(), P(), P()))(params, policy_params, tokens, lengths, key)


def generate_sharded(model, params, policy_params, tokens, lengths, key, *, policy: Policy, mesh: MeshConfig,
                     max_new_tokens: int, sampling, stop_tokens: tuple[int, ...], capacity: int):
    """`decode._generate` on a mesh: (tokens [B, max_new_tokens], counts [B], keys read [B, max_new_tokens, L]),
    replicated."""
    mesh.check(model.cfg)
    local, shard = shard_policy(policy, model.cfg, mesh)
    return _generate_sharded(model, params, policy_params, tokens, lengths, key, policy=local, shard=shard,
                             mesh=mesh.build(), max_new_tokens=max_new_tokens, sampling=sampling,
                             stop_tokens=stop_tokens, capacity=local_capacity(capacity, mesh, page_size(policy)))


def decode_loop_on_mesh(model, params, policy_params, first, cache: KVCache, key, *, policy: Policy,
                        mesh: MeshConfig, max_new_tokens: int, sampling, stop_tokens: tuple[int, ...]):
    """`decode.decode_loop(..., return_cache=True)` over a filled cache placed on the mesh
    (`placement.place_cache`; its capacity a multiple of mesh.seq), the policy state initialised on
    each device: (tokens [B, max_new_tokens], counts [B], keys read [B, max_new_tokens, L], the cache, still placed)."""
    from butler_jax.decode import decode_loop

    mesh.check(model.cfg)
    local, shard = shard_policy(policy, model.cfg, mesh)

    def run(params, policy_params, first, cache, key):
        state = local.init_state(policy_params, first.shape[0], cache.capacity)
        return decode_loop(model, params, first, cache, state, key, policy=local, max_new_tokens=max_new_tokens,
                           sampling=sampling, stop_tokens=stop_tokens, return_cache=True,
                           policy_params=policy_params, shard=shard)

    spec = cache_partition(len(cache.k))
    return on_mesh(run, mesh.build(), in_specs=(P(), P(), P(), spec, P()), out_specs=(P(), P(), P(), spec))(
        params, policy_params, first, cache, key)
