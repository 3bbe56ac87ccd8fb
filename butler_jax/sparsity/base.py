"""The selection-policy contract shared by every KV-sparsity method, and the registry of methods.

A policy is a frozen dataclass of static hyperparameters (hashable: it is a static argument of
`jax.jit`, so equal policies share one compiled program). Everything that varies between runs
of one compiled program is a traced argument: `params`, the policy's parameter pytree (the
TokenButler predictor's weights; `()` for the others), and the policy state / simulation carry.
Two halves, both implemented by every policy (dense included):

- decode: `init_state` -> `observe_prefill` at each layer of the prompt -> `attend` at each layer
  of every decode step (inside one `lax.while_loop`, see butler_jax/decode.py), which also
  returns the keys the step's attention read (the decode loop records them per step and layer);
- decode-simulated prefill: `init_simulation` -> `simulate_layer` at each layer of one parallel
  pass in which every query row attends only to what the policy would keep at that position
  (see simulate.py).

`register(name)` adds a policy class to `POLICIES`; the method list, the `sparsity.method`
choices, the eval default and `make_policy` all read that one registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol

import jax.numpy as jnp

from butler_jax.cache import KVCache
from butler_jax.config import ModelConfig
from butler_jax.decode_attention import dense_attend
from butler_jax.models.llama import LayerInputs
from butler_jax.sharding import attention as sharded_attention
from butler_jax.sparsity.stats import LayerStats

if TYPE_CHECKING:
    from butler_jax.sparsity import SparsityConfig

PolicyParams = Any  # a pytree of arrays (traced); () when the policy has no parameters


class Policy(Protocol):
    """What the decode loop and the decode-simulated prefill need from a token-selection method."""

    name: ClassVar[str]
    cfg: ModelConfig

    @classmethod
    def build(cls, sparsity: "SparsityConfig", cfg: ModelConfig, predictor: Any) -> tuple["Policy", PolicyParams]:
        """(policy, its parameter pytree) for a config section; `predictor`: (module, params) or None."""

    def init_state(self, params: PolicyParams, batch: int, capacity: int) -> Any:
        """Initial decode state for a batch and cache capacity."""

    def observe_prefill(self, params: PolicyParams, layer: int, x: LayerInputs, cache: KVCache,
                        lengths: jnp.ndarray, state: Any) -> Any:
        """Update the state with layer `layer`'s prompt q/k/v (x: [B, P, ...]; lengths [B])."""

    def attend(self, params: PolicyParams, layer: int, x: LayerInputs, cache: KVCache,
               state: Any) -> tuple[jnp.ndarray, Any, jnp.ndarray]:
        """(attention output [B, 1, Hq, hd], state, keys read f32 [B]) for the step's query (x.q: [B, 1, Hq, hd]).

        `cache` already holds this step's key/value at position cache.lengths[b] (rows attend to
        tokens 0..cache.lengths[b] inclusive). Keys read: how many cached tokens this layer's
        attention really attended per selection head (mean over the heads; `stats.keys_read` of
        the valid entries it attended, whole sequence in a sharded decode), not the nominal budget."""

    def init_simulation(self, params: PolicyParams, batch: int, length: int) -> Any:
        """Initial carry of a decode-simulated pass over [batch, length] tokens."""

    def simulate_layer(self, params: PolicyParams, layer: int, x: LayerInputs, carry: Any) -> tuple[jnp.ndarray, Any, LayerStats]:
        """(attention output [B, T, Hq, hd], carry, this layer's per-row LayerStats [B, T]) of all rows of x."""


POLICIES: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: file the policy class under `name` (its `name` attribute is set to it)."""

    def add(cls: type) -> type:
        if name in POLICIES:
            raise ValueError(f"a policy named {name!r} is already registered ({POLICIES[name].__name__})")
        cls.name = name
        POLICIES[name] = cls
        return cls

    return add


def step_variants(policy: Policy, state: Any) -> tuple[jnp.ndarray | None, tuple[Policy, ...]]:
    """(branch index [] int32, one static policy per branch) of the next decode step.

    Optional hook `policy.step_variants(state)`: a policy whose steps differ in kind (TokenButler
    predicting every i-th step) names the kind once per token, so the decode loop branches once
    per step instead of once per layer; every other policy: (None, (policy,)), no branch."""
    hook = getattr(policy, "step_variants", None)
    return hook(state) if hook is not None else (None, (policy,))


def dense_layer(layer: int, x: LayerInputs, cache: KVCache, implementation: str,
                shard: Any = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The decode step's dense attention at `layer` over every cached token 0..cache.lengths[b]
    (inside a sharded decode, `shard` (`sharding.local.Shard`): this device's part, merged):
    (output [B, 1, Hq, hd], keys read per head f32 [B] = cache.lengths + 1, every visible token)."""
    counts = cache.lengths + 1
    if shard is not None:
        out = sharded_attention.dense_attend(x.q, cache.k[layer], cache.v[layer], counts, shard, implementation)
    else:
        out = dense_attend(x.q, cache.k[layer], cache.v[layer], counts, implementation)
    return out, counts.astype(jnp.float32)
