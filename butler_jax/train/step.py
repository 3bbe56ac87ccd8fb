"""The jitted train step: frozen-model forward with the loss accumulated layer by layer in the hook.

One call runs the frozen LLM over a batch; its attention hook runs dense attention (the model's
own output), lets the student (predictor) produce at its producer layers, and at every consumer
layer adds that layer's chunked loss / metric terms to the carry. Only the predictor's params
are differentiated and updated; the LLM's params enter under `stop_gradient`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from butler_jax.attention import causal_attention
from butler_jax.models.llama import LayerInputs, LlamaForCausalLM
from butler_jax.train.config import TrainConfig
from butler_jax.train.loss import LayerTerms, layer_terms, loss_chunk_ids
from butler_jax.train.mesh import batch_sharding
from butler_jax.train.optim import lr_schedule
from butler_jax.train.student import Student


class TrainState(NamedTuple):
    """Everything that changes during training (a pytree; saved in checkpoints)."""

    step: jnp.ndarray  # int32 scalar, completed steps
    params: Any  # predictor params
    opt_state: Any


def forward_terms(model: LlamaForCausalLM, student: Student, cfg: TrainConfig, pred_params: Any,
                  frozen_params: Any, tokens: jnp.ndarray, rng: jax.Array, train: bool) -> LayerTerms:
    """Per-consumer-layer terms, stacked: each field [n_consumers]. tokens: int32 [B, T]."""
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    consumers = set(student.consumer_layers)
    chunk_ids = loss_chunk_ids(jax.random.fold_in(rng, model.cfg.num_hidden_layers), tokens.shape[1],
                               cfg.query_chunk, cfg.loss_rows)

    def attend(layer: int, x: LayerInputs, carry: tuple[Any, tuple[LayerTerms, ...]]):
        state, terms = carry
        out = causal_attention(x.q, x.k, x.v, x.positions, x.positions, window=x.window)
        state, scores = student.at_layer(pred_params, layer, x, state, jax.random.fold_in(rng, layer), train)
        if layer in consumers:
            qi, ki = scores
            terms = terms + (layer_terms(x.q, x.k, qi, ki, x.positions, cfg.query_chunk, cfg.loss,
                                         cfg.loss_region, cfg.top_fraction, cfg.metric_row_stride, chunk_ids),)
        return out, (state, terms)

    frozen = jax.lax.stop_gradient(frozen_params)
    _, (_, terms) = model.apply({"params": frozen}, tokens, positions, attend, (None, ()), method="hidden")
    return LayerTerms(*(jnp.stack(x) for x in zip(*terms)))


def summarize_terms(terms: LayerTerms) -> dict[str, jnp.ndarray]:
    """Loss (mean of per-layer losses, as the paper) and per-layer / overall metrics."""
    per_layer_loss = terms.loss()
    ratio = lambda a, b: a.astype(jnp.float32) / jnp.maximum(b, 1).astype(jnp.float32)  # noqa: E731
    return {
        "loss": per_layer_loss.mean(),
        "layer_loss": per_layer_loss,
        "accuracy": ratio(terms.correct.sum(), terms.pairs.sum()),
        "layer_accuracy": ratio(terms.correct, terms.pairs),
        "hit_rate": ratio(terms.hits.sum(), terms.true_top.sum()),
    }


def make_train_step(model: LlamaForCausalLM, student: Student, optimizer: optax.GradientTransformation,
                    cfg: TrainConfig) -> Callable:
    """Pure step (state, frozen_params, tokens [B, T], key) -> (state, metrics)."""
    schedule = lr_schedule(cfg)

    def loss_fn(params, frozen, tokens, rng):
        metrics = summarize_terms(forward_terms(model, student, cfg, params, frozen, tokens, rng, True))
        return metrics["loss"], metrics

    def step(state: TrainState, frozen: Any, tokens: jnp.ndarray, key: jax.Array):
        rng = jax.random.fold_in(key, state.step)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, frozen, tokens, rng)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        lr = schedule(state.step)
        params = optax.apply_updates(state.params, jax.tree.map(lambda u: lr * u, updates))
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        apply = finite & ((cfg.skip_grad_norm == 0) | (grad_norm <= cfg.skip_grad_norm))
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(apply, a, b), new, old)  # noqa: E731
        new_state = TrainState(state.step + 1, keep(params, state.params), keep(opt_state, state.opt_state))
        metrics = dict(metrics, grad_norm=grad_norm, lr=lr, skipped=~apply, finite=finite)
        return new_state, metrics

    return step


def jit_train_step(step: Callable, mesh: Mesh, state_shardings: Any, frozen_shardings: Any) -> Callable:
    """`jax.jit` with NamedShardings: state by its shardings (donated), batch over data x fsdp."""
    rep = NamedSharding(mesh, P())
    return jax.jit(
        step,
        in_shardings=(state_shardings, frozen_shardings, batch_sharding(mesh), rep),
        out_shardings=(state_shardings, rep),
        donate_argnums=(0,),
    )
