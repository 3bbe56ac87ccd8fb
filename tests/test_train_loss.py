"""Training loss: chunked terms against a direct numpy reference, loss decreases, only the predictor learns."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from butler_jax.train.loss import layer_terms

B, T, HQ, HKV, HD, DI = 2, 16, 4, 2, 8, 4


def _reference(q, k, qi, ki, loss, region, fraction=0.5, metric_stride=1):
    """Unchunked numpy: teacher / student logits, loss and top-fraction classification (query rows
    0, s, 2s, ... of each block of `chunk` rows are every s-th row when s divides the chunk)."""
    kr = np.repeat(k, HQ // HKV, axis=2)
    teacher = np.einsum("bqhd,bkhd->bhqk", q, kr) / np.sqrt(HD)
    student = np.einsum("bqhd,bkhd->bhqk", qi, ki) / np.sqrt(DI)
    causal = np.broadcast_to(np.tril(np.ones((T, T), bool)), teacher.shape)
    if loss == "mse":
        region_mask = causal if region == "causal" else np.ones_like(causal)
        value = ((student - teacher) ** 2)[region_mask].mean()
    else:
        def log_softmax(x):
            x = np.where(causal, x, -np.inf)
            x = x - x.max(-1, keepdims=True)
            return x - np.log(np.exp(x).sum(-1, keepdims=True))
        lt, ls = (np.where(causal, log_softmax(x), 0.0) for x in (teacher, student))
        value = np.where(causal, np.exp(lt) * (lt - ls), 0.0).sum(-1).mean()
    correct = pairs = 0
    for idx in np.ndindex(B, HQ, T):
        if idx[2] % metric_stride:
            continue
        n = idx[2] + 1
        top_k = int(np.ceil(fraction * n))
        true = set(np.argsort(-teacher[idx][:n])[:top_k])
        pred = set(np.argsort(-student[idx][:n])[:top_k])
        correct += n - len(true ^ pred)
        pairs += n
    return value, correct / pairs


@pytest.mark.parametrize("loss,region", [("mse", "causal"), ("mse", "full"), ("kl", "causal")])
@pytest.mark.parametrize("chunk,metric_stride", [(4, 1), (16, 1), (8, 4)])
def test_chunked_terms_match_reference(loss: str, region: str, chunk: int, metric_stride: int) -> None:
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(B, T, HQ, HD)), rng.normal(size=(B, T, HKV, HD))
    qi, ki = rng.normal(size=(B, T, HQ, DI)), rng.normal(size=(B, T, HQ, DI))
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    f = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    terms = layer_terms(f(q), f(k), f(qi), f(ki), positions, chunk, loss, region, metric_stride=metric_stride)
    value, accuracy = _reference(q, k, qi, ki, loss, region, metric_stride=metric_stride)
    np.testing.assert_allclose(float(terms.loss()), value, rtol=1e-5)
    np.testing.assert_allclose(float(terms.correct / terms.pairs), accuracy, rtol=1e-6)


def test_student_gradient_only() -> None:
    """Teacher inputs get no gradient; the student's do."""
    rng = np.random.default_rng(1)
    args = [jnp.asarray(rng.normal(size=s), jnp.float32)
            for s in [(B, T, HQ, HD), (B, T, HKV, HD), (B, T, HQ, DI), (B, T, HQ, DI)]]
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    grads = jax.grad(lambda *a: layer_terms(*a, positions, 8).loss(), argnums=(0, 1, 2, 3))(*args)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in grads[:2])
    assert all(float(jnp.abs(g).max()) > 0.0 for g in grads[2:])


def _tiny_run_config(tmp_path, *overrides: str):
    from butler_jax.train.config import load_run_config

    return load_run_config("configs/train_tiny.yaml", [f"train.output_dir={tmp_path}", "train.progress=false",
                                                       "train.tensorboard=false", *overrides])


@pytest.mark.parametrize("kind,loss,steps", [("paper", "mse", 40), ("longctx", "kl", 20)])
def test_loss_decreases_on_tiny_model(tmp_path, kind: str, loss: str, steps: int) -> None:
    import json

    from butler_jax.train.loop import train

    train(_tiny_run_config(tmp_path, f"train.steps={steps}", "data.batch_size=2", "data.seq_len=64",
                           f"predictor.kind={kind}", "predictor.producer_frequency=2", f"train.loss={loss}"))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == steps
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


def test_only_predictor_params_change(tmp_path) -> None:
    from butler_jax.models.llama import LlamaForCausalLM
    from butler_jax.train.optim import make_optimizer
    from butler_jax.train.step import TrainState, forward_terms, make_train_step
    from butler_jax.train.student import make_student
    from butler_jax.weights import model_from_config

    cfg = _tiny_run_config(tmp_path, "data.batch_size=1", "data.seq_len=32")
    model_cfg, frozen = model_from_config(cfg.model)
    model, student = LlamaForCausalLM(model_cfg), make_student(cfg.predictor, model_cfg)
    params = student.init(jax.random.PRNGKey(0), 32)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, model_cfg.vocab_size, (1, 32)), jnp.int32)
    key = jax.random.PRNGKey(1)

    def loss(pred, fro):
        return forward_terms(model, student, cfg.train, pred, fro, tokens, key, True).loss().mean()

    g_pred, g_frozen = jax.grad(loss, argnums=(0, 1))(params, frozen)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(g_frozen))
    trained = [bool(jnp.any(g != 0)) for g in jax.tree.leaves(g_pred)]
    assert sum(trained) >= len(trained) - 2  # all but unused leaves (v1's unused norm2) get gradients

    optimizer = make_optimizer(cfg.train)
    frozen_before = jax.tree.map(np.array, frozen)
    params_before = jax.tree.map(np.array, params)
    state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
    step = jax.jit(make_train_step(model, student, optimizer, cfg.train))
    state = step(TrainState(state.step + 1, *state[1:]), frozen, tokens, key)[0]  # past warmup's lr 0
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, frozen), frozen_before)
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params_before))]
    assert [c for c, t in zip(changed, trained) if t] == [True] * sum(trained)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    n_adam = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
    assert n_adam == 2 * n_params  # Adam moments for the predictor only, nothing for the LLM


def test_loss_rows_pick_distinct_blocks_from_the_last_half_with_the_last_one() -> None:
    from butler_jax.train.loss import loss_chunk_ids

    assert loss_chunk_ids(jax.random.PRNGKey(0), 1024, 256, 0) is None
    assert loss_chunk_ids(jax.random.PRNGKey(0), 1024, 256, 2048) is None
    seen = set()
    for seed in range(20):
        ids = np.asarray(loss_chunk_ids(jax.random.PRNGKey(seed), 8192, 256, 2048))  # 8 of 32 blocks
        assert len(ids) == 8 and len(set(ids.tolist())) == 8 and ids[-1] == 31
        assert ids.min() >= 16
        seen |= set(ids.tolist())
    assert seen == set(range(16, 32))  # every block of the last half gets drawn


def test_loss_on_chosen_blocks_equals_the_sum_of_those_blocks() -> None:
    rng = np.random.default_rng(3)
    b, t, hq, hkv, hd, dd, c = 1, 64, 4, 2, 8, 4, 16
    q, k = (jnp.asarray(rng.normal(size=(b, t, h, hd)), jnp.float32) for h in (hq, hkv))
    qi, ki = (jnp.asarray(rng.normal(size=(b, t, hq, dd)), jnp.float32) for _ in range(2))
    pos = jnp.arange(t)[None]
    ids = jnp.array([1, 3])
    chosen = layer_terms(q, k, qi, ki, pos, c, "kl", chunk_ids=ids)
    parts = [layer_terms(q, k, qi, ki, pos, c, "kl", chunk_ids=jnp.array([i])) for i in (1, 3)]
    for field in chosen._fields:
        np.testing.assert_allclose(getattr(chosen, field), sum(getattr(p, field) for p in parts), rtol=1e-5)
    assert int(chosen.loss_count) == 2 * c * hq  # KL: one term per (row, head) of the two blocks
