"""Distillation loss of one consumer layer, chunked over query blocks, and its accuracy metric.

Teacher: the frozen model's pre-softmax logits q.k/sqrt(hd) (RoPE'd, GQA keys shared by their
query heads), computed by `butler_jax.attention.attention_logits`. Student: the predictor's
importance logits qi.ki/sqrt(d') from the same function. Only one [B, H, C, T] block of each
exists at a time (C = query chunk); the block function is rematerialised in the backward pass.

Terms are sums, so layers and chunks add up exactly:
  mse: mean of (student - teacher)^2 over causal (query, key) pairs ("full": all L x L pairs,
       the paper's quirk), every head;
  kl:  mean over rows of KL(softmax(teacher) || softmax(student)) over causal keys;
  accuracy: over causal pairs, does "key in the student's top fraction of its row" equal "key in
       the teacher's top fraction"; hit rate: |student top & teacher top| / |teacher top|.
       Both need a sort of every row; `metric_stride` s > 1 estimates them on every s-th query row
       (the loss always uses every row).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from butler_jax.attention import NEG_INF, attention_logits, causal_mask


class LayerTerms(NamedTuple):
    """Summed loss (float32) and counts (int32, exact) of one layer."""

    loss_sum: jnp.ndarray  # squared errors (mse) or row KLs (kl)
    loss_count: jnp.ndarray  # pairs (mse) or rows (kl)
    correct: jnp.ndarray  # causal pairs classified right (top fraction or not)
    pairs: jnp.ndarray  # causal pairs
    hits: jnp.ndarray  # pairs in both top sets
    true_top: jnp.ndarray  # pairs in the teacher's top set

    def loss(self) -> jnp.ndarray:
        return self.loss_sum / jnp.maximum(self.loss_count, 1).astype(jnp.float32)


def top_fraction_mask(logits: jnp.ndarray, keep: jnp.ndarray, fraction: float) -> jnp.ndarray:
    """bool [..., T]: the ceil(fraction * n) highest kept entries of each row (n = kept per row)."""
    masked = jnp.where(keep, logits, NEG_INF)
    n = keep.sum(axis=-1, keepdims=True)
    k = jnp.maximum(jnp.ceil(fraction * n), 1).astype(jnp.int32)
    ordered = -jnp.sort(-masked, axis=-1)
    threshold = jnp.take_along_axis(ordered, k - 1, axis=-1)
    return keep & (masked >= threshold)


def block_terms(teacher: jnp.ndarray, student: jnp.ndarray, causal: jnp.ndarray, loss: str,
                region: str, fraction: float, metric_stride: int = 1) -> LayerTerms:
    """Terms of one query block. teacher/student: f32 [B, H, C, T]; causal: bool [B, 1, C, T].

    The metric counts use query rows 0, s, 2s, ... of the block (s = metric_stride)."""
    causal = jnp.broadcast_to(causal, teacher.shape)
    i32 = jnp.int32
    if loss == "mse":
        region_mask = jnp.ones_like(causal) if region == "full" else causal
        sq = jnp.square(student - teacher)
        loss_sum = jnp.sum(jnp.where(region_mask, sq, 0.0))
        loss_count = region_mask.sum(dtype=i32)
    else:
        log_t = jax.nn.log_softmax(jnp.where(causal, teacher, NEG_INF), axis=-1)
        log_s = jax.nn.log_softmax(jnp.where(causal, student, NEG_INF), axis=-1)
        kl = jnp.where(causal, jnp.exp(log_t) * (log_t - log_s), 0.0)
        loss_sum = kl.sum()
        loss_count = jnp.asarray(causal.shape[0] * causal.shape[1] * causal.shape[2], i32)
    rows = slice(None, None, metric_stride)
    teacher, student, causal = teacher[..., rows, :], student[..., rows, :], causal[..., rows, :]
    true_top = top_fraction_mask(teacher, causal, fraction)
    pred_top = top_fraction_mask(jax.lax.stop_gradient(student), causal, fraction)
    return LayerTerms(
        loss_sum, loss_count,
        (causal & (true_top == pred_top)).sum(dtype=i32), causal.sum(dtype=i32),
        (true_top & pred_top).sum(dtype=i32), true_top.sum(dtype=i32),
    )


def _chunks(x: jnp.ndarray, chunk: int) -> jnp.ndarray:
    """[B, T, ...] -> [T // chunk, B, chunk, ...]."""
    b, t = x.shape[:2]
    return jnp.moveaxis(x.reshape(b, t // chunk, chunk, *x.shape[2:]), 1, 0)


def loss_chunk_ids(rng: jax.Array, seq_len: int, chunk: int, rows: int) -> jnp.ndarray | None:
    """Query blocks the loss uses when it keeps at most `rows` rows a sequence (None: all blocks).

    As the long-context recipe samples its rows: blocks drawn without replacement from the last half
    of the sequence (or the last `rows` rows, if more), the last block always among them -> int32 [n].
    """
    total = seq_len // min(chunk, seq_len)
    n = min(max(rows // chunk, 1), total) if rows else total
    if n == total:
        return None
    pool = max(total // 2, n) - 1  # blocks before the last one that may be drawn
    drawn = jax.random.choice(rng, pool, (n - 1,), replace=False) + (total - 1 - pool)
    return jnp.concatenate([drawn, jnp.array([total - 1])]).astype(jnp.int32)


def layer_terms(q: jnp.ndarray, k: jnp.ndarray, qi: jnp.ndarray, ki: jnp.ndarray, positions: jnp.ndarray,
                chunk: int, loss: str = "mse", region: str = "causal", fraction: float = 0.5,
                metric_stride: int = 1, chunk_ids: jnp.ndarray | None = None) -> LayerTerms:
    """Loss and metric sums of one consumer layer over its query blocks (all, or `chunk_ids`).

    q: [B, T, Hq, hd], k: [B, T, Hkv, hd] (teacher, gradients stopped); qi: [B, T, H, d'],
    ki: [B, T, H or Hkv, d'] (student importance queries / keys, H = Hq); positions: [B, T];
    chunk_ids: int32 [n] indices of the query blocks of `chunk` rows to use (None: every block).
    """
    q, k = jax.lax.stop_gradient(q), jax.lax.stop_gradient(k)
    chunk = min(chunk, q.shape[1])

    @jax.checkpoint
    def block(args):
        q_c, qi_c, pos_c = args
        teacher = attention_logits(q_c, k)
        student = attention_logits(qi_c, ki)
        return block_terms(teacher, student, causal_mask(pos_c, positions), loss, region, fraction, metric_stride)

    blocks = (_chunks(q, chunk), _chunks(qi, chunk), _chunks(positions, chunk))
    if chunk_ids is not None:
        blocks = tuple(x[chunk_ids] for x in blocks)
    per_block = jax.lax.map(block, blocks)
    return LayerTerms(*(x.sum() for x in per_block))
