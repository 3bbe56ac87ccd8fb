"""AdamW with linear warmup + cosine decay and global-norm clipping (the paper's recipe)."""

from __future__ import annotations

import optax

from butler_jax.train.config import TrainConfig


def lr_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Learning rate at a step: 0 -> peak over warmup, then cosine to end_lr_fraction * peak."""
    warmup = int(cfg.warmup_fraction * cfg.steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=warmup,
        decay_steps=max(cfg.steps, warmup + 1), end_value=cfg.learning_rate * cfg.end_lr_fraction,
    )


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Clip, then AdamW at unit learning rate; the train step scales updates by `lr_schedule`.

    Scaling outside the optimizer lets the schedule follow the global step, which also advances
    on skipped steps (as the paper's scheduler does), while Adam's moments do not.
    """
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    parts.append(optax.adamw(1.0, b1=cfg.beta1, b2=cfg.beta2, weight_decay=cfg.weight_decay))
    return optax.chain(*parts)
