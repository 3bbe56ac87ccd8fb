"""The one map from a predictor design to the model's layers: which layer produces, which layer
consumes, and what a consumer layer's importance queries and keys are over a whole sequence.

Used by training (butler_jax/train/student.py) and by TokenButler's decode-simulated prefill
(butler_jax/sparsity/tokenbutler.py); the decode path's per-step caches live in the policy.

- paper predictor: one producer at layer 0 reading layer 0's attention input (after
  input_layernorm); state = (Q, K) [B, T, N, H, d']; layer l reads slot l.
- long-context predictor: producers at 0, G, 2G, ... reading the residual stream entering their
  layer; state = that producer's queries [B, T, G, H, d']; layer l > 0 reads slot (l - 1) % G
  of producer ((l - 1) // G) * G; keys = the layer's own post-RoPE keys projected per KV head.

A consumer's predicted logits are attention_logits(qi, ki): qi [B, T, H, d'], ki [B, T, H or Hkv, d'].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp

from butler_jax.config import ConfigError, ModelConfig, PredictorConfig
from butler_jax.models.llama import LayerInputs
from butler_jax.models.predictor import PaperPredictor, paper_param_count
from butler_jax.models.predictor_longctx import LongctxPredictor, longctx_param_count, producer_layers, serving

Scores = Optional[tuple[jnp.ndarray, jnp.ndarray]]  # (qi [B, T, H, d'], ki [B, T, H or Hkv, d'])
PredictorModule = Union[PaperPredictor, LongctxPredictor]


@dataclass(frozen=True)
class PredictorAdapter:
    """A predictor module seen layer by layer (hashable: a static part of a compiled program)."""

    module: PredictorModule

    @property
    def mcfg(self) -> ModelConfig:
        return self.module.mcfg

    @property
    def producers(self) -> tuple[int, ...]:
        if isinstance(self.module, PaperPredictor):
            return (0,)
        return producer_layers(self.mcfg.num_hidden_layers, self.module.pcfg.producer_frequency)

    @property
    def consumer_layers(self) -> tuple[int, ...]:
        """Layers whose logits are predicted (layer 0 never: it precedes every producer's output)."""
        return tuple(range(1, self.mcfg.num_hidden_layers))

    def init(self, rng: jax.Array, seq_len: int) -> Any:
        """Fresh predictor params (float32 pytree)."""
        m = self.mcfg
        if isinstance(self.module, PaperPredictor):
            x = jnp.zeros((1, seq_len, m.hidden_size), jnp.float32)
            return self.module.init(rng, x, jnp.arange(seq_len, dtype=jnp.int32)[None])["params"]
        residual = jnp.zeros((1, seq_len, m.hidden_size), jnp.float32)
        k = jnp.zeros((1, seq_len, m.num_key_value_heads, m.resolved_head_dim), jnp.float32)
        return self.module.init(rng, residual, k)["params"]

    def at_layer(self, params: Any, layer: int, x: LayerInputs, state: Any, *, deterministic: bool = True,
                 rng: jax.Array | None = None) -> tuple[Any, Scores]:
        """(new state, this layer's (qi, ki) if it is served, else None) at `layer` of a full-sequence pass."""
        apply = lambda *a, **kw: self.module.apply({"params": params}, *a, **kw)  # noqa: E731
        if isinstance(self.module, PaperPredictor):
            if layer == 0:
                rngs = {"dropout": rng} if rng is not None else {}
                state = apply(x.normed, x.positions, deterministic=deterministic, rngs=rngs)
            q_imp, k_imp = state
            return state, (q_imp[:, :, layer], k_imp[:, :, layer])
        scores = None
        if layer > 0:
            _, slot = serving(layer, self.module.pcfg.producer_frequency)
            scores = (state[:, :, slot], apply(layer, x.k, method="project_keys"))
        if layer in self.producers:
            state = apply(layer, x.residual, method="queries")
        return state, scores


def count_params(pcfg: PredictorConfig, mcfg: ModelConfig) -> int:
    """Parameter count of the configured predictor kind (each module's own closed formula)."""
    return paper_param_count(pcfg, mcfg) if pcfg.kind == "paper" else longctx_param_count(pcfg, mcfg)


def make_adapter(module_or_config: PredictorModule | PredictorConfig, mcfg: ModelConfig | None = None) -> PredictorAdapter:
    """The adapter of a predictor module, or of a `predictor:` config section and the model's config."""
    if isinstance(module_or_config, (PaperPredictor, LongctxPredictor)):
        return PredictorAdapter(module_or_config)
    pcfg = module_or_config
    if pcfg.kind == "paper":
        return PredictorAdapter(PaperPredictor(pcfg, mcfg))
    if pcfg.kind == "longctx":
        return PredictorAdapter(LongctxPredictor(pcfg, mcfg))
    raise ConfigError(f"predictor.kind={pcfg.kind!r} is not allowed; choose one of ['paper', 'longctx']")
