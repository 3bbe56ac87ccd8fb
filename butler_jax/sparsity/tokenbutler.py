"""TokenButler: top-K of the learned predictor's importance scores, for both predictor designs.

Paper predictor: reads layer 0's attention input; in simulation it runs once over the sequence;
in generation its own cache (mini-attention K/V, importance keys) is filled at prefill and
extended at layer 0 of every step, and consumer layer l scores the cached importance keys with
the step's query of slot l (per-KV-head selection: the max of the group's predicted logits).
Long-context predictor: producers every G layers give the queries of
the next G layers; keys are projections of the model's own post-RoPE keys, cached per layer.

With `predict_interval` i > 1 a new selection is computed every i-th step only (steps 1, 1+i,
...); in between each layer reuses its previous selection and adds the tokens generated since
(at most i - 1 of them, in i extra slots), as the long-context release does: no scoring and no
top-K on reuse steps. The decode loop asks `step_variants` once per token which kind of step
comes and runs that step's layers with the kind fixed (`phase`), so no layer branches; a policy
without a phase (a lone `select` call) branches per layer with `lax.cond`.

With `neighbor_fetch` every prediction (each step when i = 1) widens the scored part of the
selection as the release does (`neighbors.py`): runs of selected tokens are doubled to the
right, so a prediction's list holds up to 2x the selected tokens plus sinks and window
(min(2 k_max, capacity) slots); reuse steps reuse that widened list. Both options therefore keep
up to twice the budget (the measured kept tokens of the statistics say how many). Only the tokens
chosen by score, in [n_sink, E) with E the first token of the recent window, are expanded, and
neighbours stay below E (as in the release, where sinks and window live outside the selection).
Decode-simulated prefill (every query row a prediction step, no reuse) expands each row's keep
mask with the same rule, so decode and simulation still agree at i = 1.

Grouped selection (long-context, `group_selection`, the default where allowed): on a prediction
step the producer layer p scores each sparse layer it serves (p+1 .. p+G) against that layer's
cached importance keys, runs ONE top-K (and neighbour fetch) on the scores stacked along the head
axis [B, G*Hsel, T] (rows are independent: the same result as per-layer calls, one launch per
group instead of per layer) and stores each layer's part in `previous`, which the layer's `select`
then reads. Layer l > p has not written the current token's importance key yet, so that one slot
is stale; it is the query itself, forced in by the recent window whatever its score, so grouping
needs n_window >= 1. In a sharded decode the stacked rows hold this device's tokens [B, G*Hsel, Tl]
and go through `sharding.select.sharded_select` as a single layer's rows do (exact per row, so
exact stacked). Without a recent window, and for a lone `select` at i > 1 (no `phase`), the layers
select one by one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from butler_jax.attention import attention_logits
from butler_jax.sharding.attention import masked_attend
from butler_jax.models.predictor import PaperPredictor, importance_logits
from butler_jax.models.predictor_adapter import PredictorAdapter, PredictorModule
from butler_jax.models.predictor_longctx import LongctxPredictor, longctx_scores
from butler_jax.sparsity.base import register
from butler_jax.sparsity.neighbors import expand_neighbor_mask, expand_neighbors
from butler_jax.sparsity.scored import ScoredPolicy
from butler_jax.sparsity.select import forced_counts, forced_keys, selects_ascending


class TokenButlerState(NamedTuple):
    cache: Any  # PredictorCache (paper) or per-layer importance keys (long-context)
    query: jnp.ndarray  # [B, N, H, d'] importance queries of the current step
    step: jnp.ndarray  # decode steps taken
    previous: tuple  # per layer (indices, valid) of the last prediction
    predicted_at: jnp.ndarray  # [B] position of the query of the last prediction


@register("tokenbutler")
@dataclass(frozen=True)
class TokenButlerBase(ScoredPolicy):
    """Shared by both predictor designs: the predictor module is static, its params are the
    policy params (traced); `sparsity.predict_interval` and `sparsity.neighbor_fetch` apply."""

    module: PredictorModule = None  # type: ignore[assignment]
    phase: str | None = None  # "predict" / "reuse": the kind of every layer's step (`step_variants`); None: per layer

    @classmethod
    def build(cls, sparsity, cfg, predictor=None):
        if predictor is None:
            raise ValueError("sparsity.method=tokenbutler needs a trained predictor: set predictor.checkpoint in the config")
        module, params = predictor
        if isinstance(module, PaperPredictor):
            return TokenButlerPolicy(cfg, sparsity, module), params
        if isinstance(module, LongctxPredictor):
            return TokenButlerLongctxPolicy(cfg, sparsity, module), params
        raise ValueError(f"TokenButler needs a PaperPredictor or LongctxPredictor, got {type(module).__name__}")

    @property
    def predict_interval(self) -> int:
        return self.settings.predict_interval

    @property
    def neighbor_fetch(self) -> bool:
        return bool(self.settings.neighbor_fetch)

    @property
    def adapter(self) -> PredictorAdapter:
        return PredictorAdapter(self.module)

    def _apply(self, params, method: str, *args):
        return self.module.apply({"params": params}, *args, method=method)

    def _put_rows(self, buf, values, positions, axis: int):
        """buf.at[rows, ..., positions (at `axis`)].set(values): one token per row at global positions [B]."""
        if self.shard is not None:
            return self.shard.write_rows(buf, values, positions, axis)
        index = (jnp.arange(buf.shape[0]),) + (slice(None),) * (axis - 1) + (positions,)
        return buf.at[index].set(values.astype(buf.dtype))

    def _put_prefix(self, buf, block, axis: int):
        """A prompt block (buf's layout, tokens at `axis`) written at positions 0..P-1."""
        if self.shard is not None:
            return self.shard.write_prefix(buf, block, axis)
        return jax.lax.dynamic_update_slice(buf, block.astype(buf.dtype), (0,) * buf.ndim)

    # --- decode-simulated prefill: the adapter's layer map -------------------------------------
    def init_simulation(self, params, batch: int, length: int) -> Any:
        return None, None  # (adapter state, this layer's (qi, ki))

    def observe_simulation(self, params, layer, x, carry):
        return self.adapter.at_layer(params, layer, x, carry[0])

    def simulated_scores(self, params, layer, x, rows, logits, carry):
        qi, ki = carry[1]
        return self.reduce_heads(attention_logits(qi[:, rows], ki))

    def _empty_previous(self, cfg, batch: int, capacity: int) -> tuple:
        hsel = cfg.num_key_value_heads if self.settings.granularity == "kv" else cfg.num_attention_heads
        k = self.k_select(capacity)
        empty = (jnp.zeros((batch, hsel, k), jnp.int32), jnp.zeros((batch, hsel, k), bool))
        return tuple(empty for _ in range(cfg.num_hidden_layers))

    def is_prediction_step(self, step: jnp.ndarray) -> jnp.ndarray:
        return (step - 1) % self.predict_interval == 0

    def step_variants(self, state: TokenButlerState) -> tuple[jnp.ndarray | None, tuple["TokenButlerBase", ...]]:
        """(branch index [] int32, one policy per branch) for the next decode step: with
        predict_interval > 1, 0 = a prediction step, 1 = a reuse step (`phase` fixed);
        (None, (self,)) when every step is alike."""
        if self.predict_interval == 1 or self.phase is not None:
            return None, (self,)
        index = jnp.where(self.is_prediction_step(state.step + 1), 0, 1).astype(jnp.int32)
        return index, (replace(self, phase="predict"), replace(self, phase="reuse"))

    def advance(self, state: TokenButlerState, cache) -> TokenButlerState:
        """Count a decode step (called at layer 0) and remember where predictions happen."""
        step = state.step + 1
        at = jnp.where(self.is_prediction_step(step), cache.lengths, state.predicted_at)
        return state._replace(step=step, predicted_at=at)

    def k_select(self, capacity: int) -> int:
        """Slots of one prediction's index list: k_max, or min(2 k_max, capacity) with neighbour fetch."""
        k = self.k_max(capacity)
        return min(2 * k, capacity) if self.neighbor_fetch else k

    def _predict(self, params, layer, x, cache, state: TokenButlerState):
        """A fresh selection (indices, valid) [B, Hsel, k_select] for the step's query."""
        scores, state = self.decode_scores(params, layer, x, cache, state)
        idx, ok = self._top(scores, cache)
        return idx, ok, state

    def _top(self, scores: jnp.ndarray, cache) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Top-K (+ neighbour fetch) of scores [B, R, T] per row -> (indices, valid) [B, R, k_select];
        sharded: T = this device's tokens, `select_top` exchanges and returns local slots (no
        neighbour fetch there: `sharding.decode.check_policy` refuses it)."""
        idx, ok = self.select_top(scores, cache.lengths, cache.capacity, self.settings.n_window)
        if self.neighbor_fetch:
            idx, ok = self._expand(idx, ok, cache.lengths, cache.capacity)
        return idx, ok

    def _prediction(self, params, layer, x, cache, state: TokenButlerState) -> tuple[jnp.ndarray, jnp.ndarray]:
        """This prediction step's selection (indices, valid) [B, Hsel, k_select] of `layer`."""
        idx, ok, _ = self._predict(params, layer, x, cache, state)
        return idx, ok

    def _expand(self, idx, ok, query_pos, capacity: int):
        """Neighbour fetch on a decode selection: expand the scored tokens in [n_sink, E), keep the forced ones.

        E = query_pos + 1 - n_window (the first always-kept recent token; the forced counts of
        `forced_counts`, none where the budget cannot hold them). The result is distinct
        and holds at most 2 x the selected tokens, so min(2 k_max, capacity) slots suffice: slots
        [0, k) keep the selection as given (forced tokens included), [k, 2k) its new neighbours and
        fill (`expand_neighbors` puts them there whatever the order of its first k slots).
        """
        s, k = self.settings, idx.shape[-1]
        n_snk, n_win = forced_counts(query_pos + 1, s.token_budget.kept(query_pos + 1), s.n_sink, s.n_window)
        end = (query_pos + 1 - n_win)[:, None]  # [B, 1]
        forced = ok & ((idx < n_snk[:, None, None]) | (idx >= end[..., None]))
        ascending = selects_ascending(s.token_budget, k, s.n_sink, s.n_window)
        wide, wide_ok = expand_neighbors(idx, ok & ~forced, end, 2 * k, n_tokens=capacity, ascending=ascending)
        merged = jnp.concatenate([idx, wide[..., k:]], -1)
        merged_ok = jnp.concatenate([ok, wide_ok[..., k:]], -1)
        if capacity >= 2 * k:
            return merged, merged_ok
        big = jnp.iinfo(jnp.int32).max  # fewer slots than 2k: at most `capacity` distinct tokens exist
        merged = jnp.sort(jnp.where(merged_ok, merged, big), -1)[..., :capacity]
        return jnp.where(merged != big, merged, 0), merged != big

    def select(self, params, layer, x, cache, state: TokenButlerState):
        if self.predict_interval == 1:
            idx, ok = self._prediction(params, layer, x, cache, state)
            return idx, ok, state
        extra = jnp.broadcast_to(jnp.arange(1, self.predict_interval + 1, dtype=jnp.int32), (*cache.lengths.shape, self.predict_interval))

        def predict(_):
            return self._prediction(params, layer, x, cache, state)

        def reuse(_):
            return state.previous[layer]

        if self.phase is None:
            predicting = self.is_prediction_step(state.step)
            idx, ok = jax.lax.cond(predicting, predict, reuse, None)
        else:
            predicting = self.phase == "predict"
            idx, ok = predict(None) if predicting else reuse(None)
        new = state.predicted_at[:, None] + extra  # tokens written since the prediction
        new_ok = (new <= cache.lengths[:, None]) & ~jnp.asarray(predicting)
        hsel = idx.shape[1]
        indices = jnp.concatenate([idx, jnp.broadcast_to(new[:, None], (new.shape[0], hsel, new.shape[1]))], axis=-1)
        valid = jnp.concatenate([ok, jnp.broadcast_to(new_ok[:, None], (new.shape[0], hsel, new.shape[1]))], axis=-1)
        previous = list(state.previous)
        previous[layer] = (idx, ok)
        return jnp.minimum(indices, cache.capacity - 1), valid, state._replace(previous=tuple(previous))

    def widen_keep(self, keep, q_pos, n_keys: int):
        """Neighbour fetch on a simulated keep mask [B, Hsel, Tq, Tk] (identity when disabled)."""
        if not self.neighbor_fetch:
            return keep
        s = self.settings
        kept = s.token_budget.kept(q_pos + 1)
        forced = forced_keys(jnp.arange(n_keys), q_pos, s.n_sink, s.n_window, kept)[:, None]
        n_win = forced_counts(q_pos + 1, kept, s.n_sink, s.n_window)[1]
        return keep | expand_neighbor_mask(keep & ~forced, (q_pos + 1 - n_win)[:, None])


class TokenButlerPolicy(TokenButlerBase):
    """Paper predictor (one producer at layer 0 serving every layer)."""

    def init_state(self, params, batch: int, capacity: int) -> TokenButlerState:
        cfg = self.cfg
        cache = self._apply(params, "init_cache", batch, capacity)
        n, h, dd = cache.imp_k.shape[1], cache.imp_k.shape[2], cache.imp_k.shape[4]
        return TokenButlerState(cache, jnp.zeros((batch, n, h, dd)), jnp.zeros((), jnp.int32),
                                self._empty_previous(cfg, batch, capacity), jnp.zeros((batch,), jnp.int32))

    def observe_prefill(self, params, layer, x, cache, lengths, state: TokenButlerState):
        if layer != 0:
            return state
        if self.shard is None:
            _, pcache = self._apply(params, "prefill", x.normed, x.positions, lengths, state.cache)
            return state._replace(cache=pcache)
        _, k, v, ki = self._apply(params, "prefill_blocks", x.normed, x.positions, lengths)
        pc = state.cache
        return state._replace(cache=pc._replace(k=self._put_prefix(pc.k, k, 2), v=self._put_prefix(pc.v, v, 2),
                                                imp_k=self._put_prefix(pc.imp_k, ki, 3)))

    def observe_decode(self, params, layer, x, cache, state: TokenButlerState):
        if layer != 0:
            return state
        if self.shard is None:
            query, pcache = self._apply(params, "step", x.normed, x.positions, state.cache)
        else:
            query, pcache = self._sharded_step(params, x.normed, x.positions, state.cache)
        return self.advance(state._replace(cache=pcache, query=query[:, 0]), cache)

    def _sharded_step(self, params, x, positions, pc):
        """`PaperPredictor.step` on this device's part of the predictor cache (its mini-attention
        merged across devices by log-sum-exp)."""
        x = x.astype(jnp.float32)
        q, k, v = self._apply(params, "_mini_qkv", x, positions)
        pos = positions[:, 0]
        pc = pc._replace(k=self._put_rows(pc.k, k[:, 0], pos, 2), v=self._put_rows(pc.v, v[:, 0], pos, 2))
        keep = (self.shard.positions(pc.k.shape[2])[None, :] <= pos[:, None])[:, None, None, :]
        a = masked_attend(attention_logits(q, pc.k, kv_layout="bhtd"), keep, pc.v, self.shard)
        qi, ki = self._apply(params, "_importance", x, a.reshape(x.shape[0], 1, -1), positions, True)
        return qi, pc._replace(imp_k=self._put_rows(pc.imp_k, ki[:, 0], pos, 3))

    def decode_scores(self, params, layer, x, cache, state: TokenButlerState):
        q = state.query[:, layer][:, None]  # [B, 1, H, d']
        k = jnp.swapaxes(state.cache.imp_k[:, layer], 1, 2)  # [B, T, H, d']
        return self.reduce_heads(importance_logits(q, k)[:, :, 0]), state


@dataclass(frozen=True)
class TokenButlerLongctxPolicy(TokenButlerBase):
    """Long-context producer predictor; importance keys cached per layer in the model dtype.
    `group_selection`: one top-K per producer group on prediction steps where `grouped` allows."""

    group_selection: bool = True

    @property
    def frequency(self) -> int:
        return self.module.pcfg.producer_frequency

    @property
    def grouped(self) -> bool:
        """Whether prediction steps select per producer group: asked for, the current token forced
        (n_window >= 1) and every step's kind static (i = 1 or a fixed `phase`); sharded or not."""
        return (self.group_selection and self.settings.n_window >= 1
                and (self.predict_interval == 1 or self.phase is not None))

    def served(self, producer: int) -> tuple[int, ...]:
        """The sparse layers (>= dense_layers) whose queries `producer` gives: p+1 .. min(p+G, L-1)."""
        last = min(producer + self.frequency, self.cfg.num_hidden_layers - 1)
        return tuple(l for l in range(producer + 1, last + 1) if l >= self.settings.dense_layers)

    def _group_predict(self, params, producer: int, cache, state: TokenButlerState) -> TokenButlerState:
        """One `_top` over the served layers' scores stacked to [B, n*Hsel, T] (T: this device's
        tokens when sharded); each layer's [B, Hsel, k_select] part stored in state.previous."""
        layers = self.served(producer)
        if not layers:
            return state
        scores = jnp.concatenate([self.decode_scores(params, l, None, cache, state)[0] for l in layers], axis=1)
        idx, ok = self._top(scores, cache)
        hsel = scores.shape[1] // len(layers)
        previous = list(state.previous)
        for i, l in enumerate(layers):
            previous[l] = (idx[:, i * hsel:(i + 1) * hsel], ok[:, i * hsel:(i + 1) * hsel])
        return state._replace(previous=tuple(previous))

    def _prediction(self, params, layer, x, cache, state: TokenButlerState) -> tuple[jnp.ndarray, jnp.ndarray]:
        """The group's stored selection when grouped (layer 0 is served by no producer), else per layer."""
        if self.grouped and layer > 0 and layer >= self.settings.dense_layers:
            return state.previous[layer]
        return super()._prediction(params, layer, x, cache, state)

    def init_state(self, params, batch: int, capacity: int) -> TokenButlerState:
        cfg = self.cfg
        dt = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32
        dd = self.module.pcfg.dDash
        keys = tuple(jnp.zeros((batch, cfg.num_key_value_heads, capacity, dd), dt) for _ in range(cfg.num_hidden_layers))
        query = jnp.zeros((batch, cfg.num_hidden_layers, cfg.num_attention_heads, dd), dt)
        return TokenButlerState(keys, query, jnp.zeros((), jnp.int32), self._empty_previous(cfg, batch, capacity),
                                jnp.zeros((batch,), jnp.int32))

    def observe_prefill(self, params, layer, x, cache, lengths, state: TokenButlerState):
        keys = list(state.cache)
        block = jnp.swapaxes(self._apply(params, "project_keys", layer, x.k), 1, 2).astype(keys[layer].dtype)
        keys[layer] = self._put_prefix(keys[layer], block, 2)
        return state._replace(cache=tuple(keys))

    def observe_decode(self, params, layer, x, cache, state: TokenButlerState):
        keys = list(state.cache)
        new = self._apply(params, "project_keys", layer, x.k)[:, 0].astype(keys[layer].dtype)  # [B, Hkv, d']
        keys[layer] = self._put_rows(keys[layer], new, cache.lengths, 2)
        state = state._replace(cache=tuple(keys))
        if layer == 0:
            state = self.advance(state, cache)
        if layer in self.adapter.producers:
            produced = self._apply(params, "queries", layer, x.residual)[:, 0].astype(state.query.dtype)  # [B, G, H, d']
            served = range(layer + 1, min(layer + 1 + self.frequency, self.cfg.num_hidden_layers))
            query = state.query
            for slot, consumer in enumerate(served):
                query = query.at[:, consumer].set(produced[:, slot])
            state = state._replace(query=query)
            if self.grouped and self.phase != "reuse":
                state = self._group_predict(params, layer, cache, state)
        return state

    def decode_scores(self, params, layer, x, cache, state: TokenButlerState):
        q = state.query[:, layer][:, None]  # [B, 1, H, d']
        k = jnp.swapaxes(state.cache[layer], 1, 2)  # [B, T, Hkv, d']
        return self.reduce_heads(longctx_scores(q, k)[:, :, 0]), state
