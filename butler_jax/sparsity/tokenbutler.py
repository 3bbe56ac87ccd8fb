"""TokenButler: top-K of the learned predictor's importance scores.

The paper predictor reads layer 0's attention input. In simulation it runs once over the whole
sequence; in generation its own cache (mini-attention K/V, importance keys) is filled at prefill
and extended at every step at layer 0, and each consumer layer l scores the cached importance
keys with the step's importance query of slot l. With `predict_interval` i > 1 a new selection
is computed every i-th step only; in between, each layer reuses its previous selection (the
sinks and the recent window stay current), as the long-context release does.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from butler_jax.models.predictor import PaperPredictor, PredictorCache, importance_logits
from butler_jax.sparsity.scored import ScoredPolicy, SelectionSettings
from butler_jax.sparsity.select import decode_select


class TokenButlerState(NamedTuple):
    cache: PredictorCache
    query: jnp.ndarray  # [B, N, H, d'] importance queries of the current step
    step: jnp.ndarray  # decode steps taken
    previous: tuple  # per layer (indices, valid) of the last prediction


class TokenButlerPolicy(ScoredPolicy):
    """Selection by the predictor's scores. `predictor` = (PaperPredictor module, its params)."""

    name = "tokenbutler"

    def __init__(self, settings: SelectionSettings, cfg, predictor, predict_interval: int = 1, neighbor_fetch: bool = False):
        super().__init__(settings, cfg)
        if predict_interval < 1:
            raise ValueError(f"sparsity.predict_interval={predict_interval} must be >= 1")
        if neighbor_fetch:
            raise ValueError("sparsity.neighbor_fetch is not implemented yet; set it to false")
        self.module, self.params = predictor
        if not isinstance(self.module, PaperPredictor):
            raise ValueError(f"TokenButler needs a PaperPredictor, got {type(self.module).__name__}")
        self.predict_interval = predict_interval

    def _apply(self, method: str, *args):
        return self.module.apply({"params": self.params}, *args, method=method)

    # --- simulation ----------------------------------------------------------------------------
    def init_simulation(self, batch: int, length: int) -> Any:
        return None

    def observe_simulation(self, layer, x, carry):
        if layer == 0:
            return self._apply("__call__", x.normed, x.positions)
        return carry

    def simulated_scores(self, layer, x, rows, logits, carry):
        qi, ki = carry
        return self.reduce_heads(importance_logits(qi[:, rows, layer], ki[:, :, layer]))

    # --- generation ----------------------------------------------------------------------------
    def init_state(self, cfg, batch: int, capacity: int) -> TokenButlerState:
        cache = self._apply("init_cache", batch, capacity)
        n, h, dd = cache.imp_k.shape[1], cache.imp_k.shape[2], cache.imp_k.shape[4]
        hsel = cfg.num_key_value_heads if self.settings.granularity == "kv" else cfg.num_attention_heads
        k = self.k_max(capacity)
        empty = (jnp.zeros((batch, hsel, k), jnp.int32), jnp.zeros((batch, hsel, k), bool))
        return TokenButlerState(cache, jnp.zeros((batch, n, h, dd)), jnp.zeros((), jnp.int32),
                                tuple(empty for _ in range(cfg.num_hidden_layers)))

    def observe_prefill(self, layer, x, cache, lengths, state: TokenButlerState):
        if layer != 0:
            return state
        _, pcache = self._apply("prefill", x.normed, x.positions, lengths, state.cache)
        return state._replace(cache=pcache)

    def observe_decode(self, layer, x, cache, state: TokenButlerState):
        if layer != 0:
            return state
        query, pcache = self._apply("step", x.normed, x.positions, state.cache)
        return state._replace(cache=pcache, query=query[:, 0], step=state.step + 1)

    def decode_scores(self, layer, x, cache, state: TokenButlerState):
        q = state.query[:, layer][:, None]  # [B, 1, H, d']
        k = jnp.swapaxes(state.cache.imp_k[:, layer], 1, 2)  # [B, T, H, d']
        return self.reduce_heads(importance_logits(q, k)[:, :, 0]), state

    def select(self, layer, x, cache, state: TokenButlerState):
        s, k_max = self.settings, self.k_max(cache.capacity)

        def predict(_):
            scores, _ = self.decode_scores(layer, x, cache, state)
            return decode_select(scores, cache.lengths, s.budget, k_max, s.n_sink, s.n_window)

        def reuse(_):
            idx, valid = state.previous[layer]
            b, hsel = idx.shape[:2]
            marks = jnp.full((b, hsel, cache.capacity), -jnp.inf).at[
                jnp.arange(b)[:, None, None], jnp.arange(hsel)[None, :, None], idx].max(jnp.where(valid, 0.0, -jnp.inf))
            return decode_select(marks, cache.lengths, s.budget, k_max, s.n_sink, s.n_window)

        if self.predict_interval == 1:
            indices, valid = predict(None)
        else:
            indices, valid = jax.lax.cond((state.step - 1) % self.predict_interval == 0, predict, reuse, None)
        previous = list(state.previous)
        previous[layer] = (indices, valid)
        return indices, valid, state._replace(previous=tuple(previous))
