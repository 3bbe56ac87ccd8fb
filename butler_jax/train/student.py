"""The trained model seen by the train step: a predictor behind one per-layer interface.

A `Student` is called at every layer of the frozen model's forward (inside the attention hook).
At producer layers it computes and stores its outputs in `state`; at consumer layers it returns
that layer's importance queries and keys, whose dot products / sqrt(d') are its predicted logits.
The layer map (which layer produces, which consumes) is the predictor adapter's
(butler_jax/models/predictor_adapter.py), shared with TokenButler's simulation.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import jax

from butler_jax.config import ModelConfig, PredictorConfig
from butler_jax.models.llama import LayerInputs
from butler_jax.models.predictor_adapter import PredictorAdapter, Scores, make_adapter


class Student(Protocol):
    """What the train step needs from a predictor."""

    consumer_layers: tuple[int, ...]  # layers whose logits are predicted (layer 0 never)

    def init(self, rng: jax.Array, seq_len: int) -> Any:
        """Fresh predictor params (float32 pytree)."""

    def at_layer(self, params: Any, layer: int, x: LayerInputs, state: Any, rng: jax.Array,
                 train: bool) -> tuple[Any, Scores]:
        """(new state, this layer's scores if it is a consumer layer else None)."""


class PredictorStudent:
    """A predictor adapter in training: dropout on when `train`."""

    def __init__(self, adapter: PredictorAdapter) -> None:
        self.adapter = adapter
        self.module = adapter.module
        self.consumer_layers = adapter.consumer_layers

    def init(self, rng: jax.Array, seq_len: int) -> Any:
        return self.adapter.init(rng, seq_len)

    def at_layer(self, params: Any, layer: int, x: LayerInputs, state: Any, rng: jax.Array,
                 train: bool) -> tuple[Any, Scores]:
        state, scores = self.adapter.at_layer(params, layer, x, state, deterministic=not train, rng=rng)
        return state, scores if layer in self.consumer_layers else None


StudentFactory = Callable[[PredictorConfig, ModelConfig], Student]


def make_student(pcfg: PredictorConfig, mcfg: ModelConfig) -> Student:
    """The Student for a `predictor:` config section and the (loaded) model's config."""
    return PredictorStudent(make_adapter(pcfg, mcfg))
