"""The trained model seen by the train step: a predictor behind one per-layer interface.

A `Student` is called at every layer of the frozen model's forward (inside the attention hook).
At producer layers it computes and stores its outputs in `state`; at consumer layers it returns
that layer's importance queries and keys, whose dot products / sqrt(d') are its predicted logits.

- paper predictor (`predictor.kind: paper`): one producer at layer 0 reading layer 0's attention
  input (after input_layernorm); state = (Q, K) [B, T, N, H, d']; layer l reads slot l.
- long-context predictor (`kind: longctx`): producers at 0, G, 2G, ... reading the residual
  stream entering their layer (the inference path); state = that producer's queries
  [B, T, G, H, d']; keys = the layer's own post-RoPE keys projected per KV head [B, T, Hkv, d'].
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

import jax
import jax.numpy as jnp

from butler_jax.config import ConfigError, ModelConfig, PredictorConfig
from butler_jax.models.llama import LayerInputs
from butler_jax.models.predictor import PaperPredictor
from butler_jax.models.predictor_longctx import LongctxPredictor, producer_layers, serving

Scores = Optional[tuple[jnp.ndarray, jnp.ndarray]]  # (qi [B, T, H, d'], ki [B, T, H or Hkv, d'])


class Student(Protocol):
    """What the train step needs from a predictor."""

    consumer_layers: tuple[int, ...]  # layers whose logits are predicted (layer 0 never)

    def init(self, rng: jax.Array, seq_len: int) -> Any:
        """Fresh predictor params (float32 pytree)."""

    def at_layer(self, params: Any, layer: int, x: LayerInputs, state: Any, rng: jax.Array,
                 train: bool) -> tuple[Any, Scores]:
        """(new state, this layer's scores if it is a consumer layer else None)."""


class PaperStudent:
    """The paper predictor at layer 0, serving layers 1 .. N-1."""

    def __init__(self, pcfg: PredictorConfig, mcfg: ModelConfig) -> None:
        self.module = PaperPredictor(pcfg, mcfg)
        self.mcfg = mcfg
        self.consumer_layers = tuple(range(1, mcfg.num_hidden_layers))

    def init(self, rng: jax.Array, seq_len: int) -> Any:
        x = jnp.zeros((1, seq_len, self.mcfg.hidden_size), jnp.float32)
        positions = jnp.arange(seq_len, dtype=jnp.int32)[None]
        return self.module.init(rng, x, positions)["params"]

    def at_layer(self, params: Any, layer: int, x: LayerInputs, state: Any, rng: jax.Array,
                 train: bool) -> tuple[Any, Scores]:
        if layer == 0:
            state = self.module.apply({"params": params}, x.normed, x.positions, deterministic=not train,
                                      rngs={"dropout": rng})
            return state, None
        q_imp, k_imp = state
        return state, (q_imp[:, :, layer], k_imp[:, :, layer])


class LongctxStudent:
    """Producers every G layers; keys from the model's own keys through per-(layer, KV head) maps."""

    def __init__(self, pcfg: PredictorConfig, mcfg: ModelConfig) -> None:
        self.module = LongctxPredictor(pcfg, mcfg)
        self.mcfg = mcfg
        self.frequency = pcfg.producer_frequency
        self.producers = set(producer_layers(mcfg.num_hidden_layers, pcfg.producer_frequency))
        self.consumer_layers = tuple(range(1, mcfg.num_hidden_layers))

    def init(self, rng: jax.Array, seq_len: int) -> Any:
        m = self.mcfg
        residual = jnp.zeros((1, seq_len, m.hidden_size), jnp.float32)
        k = jnp.zeros((1, seq_len, m.num_key_value_heads, m.resolved_head_dim), jnp.float32)
        return self.module.init(rng, residual, k)["params"]

    def at_layer(self, params: Any, layer: int, x: LayerInputs, state: Any, rng: jax.Array,
                 train: bool) -> tuple[Any, Scores]:
        del rng, train  # no dropout in the producer
        scores = None
        if layer > 0:
            _, slot = serving(layer, self.frequency)
            keys = self.module.apply({"params": params}, layer, x.k, method="project_keys")
            scores = (state[:, :, slot], keys)
        if layer in self.producers:
            state = self.module.apply({"params": params}, layer, x.residual, method="queries")
        return state, scores


StudentFactory = Callable[[PredictorConfig, ModelConfig], Student]


def make_student(pcfg: PredictorConfig, mcfg: ModelConfig) -> Student:
    """The Student for a `predictor:` config section and the (loaded) model's config."""
    if pcfg.kind == "paper":
        return PaperStudent(pcfg, mcfg)
    if pcfg.kind == "longctx":
        return LongctxStudent(pcfg, mcfg)
    raise ConfigError(f"predictor.kind={pcfg.kind!r} is not allowed; choose one of ['paper', 'longctx']")
