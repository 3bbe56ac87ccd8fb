"""The training run: build everything from a RunConfig, place it on the mesh, step, log, checkpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from tqdm import tqdm

from butler_jax.errors import CheckpointError, NonFiniteLossError
from butler_jax.jsonl import append_record
from butler_jax.models.llama import LlamaForCausalLM
from butler_jax.train.checkpoint import Checkpoints, abstract_like
from butler_jax.train.config import RunConfig, resume_changes
from butler_jax.train.lengths import build_step_data
from butler_jax.train.mesh import batch_sharding, check_batch, fsdp_shardings, make_mesh, put_global, put_tree, replicated
from butler_jax.train.metrics import MetricsWriter
from butler_jax.train.optim import make_optimizer
from butler_jax.train.step import TrainState, jit_train_step, make_train_step
from butler_jax.train.student import StudentFactory, make_student
from butler_jax.weights import model_from_config


def _host_row(step: int, metrics: dict[str, Any], layers: tuple[int, ...], tokens_per_s: float | None,
              epoch: int) -> dict[str, Any]:
    m = jax.device_get(metrics)
    row: dict[str, Any] = {"step": step, "epoch": epoch}
    for key in ("loss", "accuracy", "hit_rate", "grad_norm", "lr"):
        row[key] = float(m[key])
    row["skipped"] = bool(m["skipped"])
    if tokens_per_s is not None:
        row["tokens_per_s"] = tokens_per_s
    row["layer_loss"] = {str(l): float(v) for l, v in zip(layers, np.asarray(m["layer_loss"]))}
    row["layer_accuracy"] = {str(l): float(v) for l, v in zip(layers, np.asarray(m["layer_accuracy"]))}
    return row


def _export_predictor(params: Any, cfg: RunConfig, model_cfg: Any, directory: Path, is_main: bool, step: int) -> Path:
    """Write the predictor after `step` training steps in the format `evaluate.py` loads."""
    from butler_jax.models.predictor_io import save_predictor

    if jax.process_count() > 1:
        from jax.experimental.multihost_utils import process_allgather

        params = process_allgather(params, tiled=True)
    if is_main:
        save_predictor(params, cfg.predictor, model_cfg, directory, extra={"train_step": step})
    return directory


def _state_init(student: Any, optimizer: Any, seq_len: int):
    """key -> the initial TrainState (predictor params and optimizer state)."""
    def init_state(key: jax.Array) -> TrainState:
        params = student.init(key, seq_len)
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
    return init_state


def export_checkpoint(cfg: RunConfig, student_factory: StudentFactory = make_student) -> dict[str, Any]:
    """Write the newest checkpoint's predictor to `<train.output_dir>/predictor-step<N>/` (no training).

    The run's settings are checked as for a resume; the data is neither read nor compared (the
    predictor's parameters do not depend on it once trained), so a run stopped before `train.steps`
    can be evaluated anywhere its checkpoint travels.
    """
    tc = cfg.train
    mesh = make_mesh(tc)
    model_cfg, _ = model_from_config(cfg.model)
    init_state = _state_init(student_factory(cfg.predictor, model_cfg), make_optimizer(tc), cfg.data.seq_len)
    init_key = jax.random.split(jax.random.PRNGKey(tc.seed))[0]
    shape = jax.eval_shape(init_state, init_key)
    ckpt = Checkpoints(Path(tc.output_dir) / "checkpoints", tc.save_every, tc.keep_checkpoints)
    try:
        state, _ = ckpt.restore_newest_good(abstract_like(shape, fsdp_shardings(shape, mesh)),
                                            lambda saved: resume_changes(saved["config"], cfg.raw))
    finally:
        ckpt.close()
    step = int(jax.device_get(state.step))
    folder = Path(tc.output_dir) / f"predictor-step{step}"
    _export_predictor(state.params, cfg, model_cfg, folder, jax.process_index() == 0, step)
    return {"steps": step, "checkpoint": str(ckpt.directory), "predictor": str(folder)}


def train(cfg: RunConfig, resume: bool = False, student_factory: StudentFactory = make_student) -> dict[str, Any]:
    """Run (or resume) training; returns the final metrics. Writes under `train.output_dir`."""
    tc = cfg.train
    out = Path(tc.output_dir)
    mesh = make_mesh(tc)
    rows_per_step = {cfg.data.batch_size} | {cfg.data.batch_size * cfg.data.seq_len // L for L in cfg.data.mixed_lengths}
    for rows in sorted(rows_per_step):
        check_batch(rows, mesh)
    is_main = jax.process_index() == 0

    model_cfg, frozen_host = model_from_config(cfg.model)
    model = LlamaForCausalLM(model_cfg)
    student = student_factory(cfg.predictor, model_cfg)
    data = build_step_data(cfg.data, model_cfg)
    optimizer = make_optimizer(tc)
    init_key, step_key = jax.random.split(jax.random.PRNGKey(tc.seed))
    init_state = _state_init(student, optimizer, cfg.data.seq_len)

    state_shardings = fsdp_shardings(jax.eval_shape(init_state, init_key), mesh)
    frozen_shardings = (fsdp_shardings if tc.shard_frozen else replicated)(frozen_host, mesh)
    frozen = put_tree(frozen_host, frozen_shardings)

    ckpt = Checkpoints(out / "checkpoints", tc.save_every, tc.keep_checkpoints)
    changes: dict = {}  # safe settings this resume changed
    if resume:
        abstract = abstract_like(jax.eval_shape(init_state, init_key), state_shardings)

        def check_meta(saved: dict) -> None:
            changes.update(resume_changes(saved["config"], cfg.raw))
            if saved["data_fingerprint"] != data.fingerprint():
                raise CheckpointError(f"the data differs from the checkpointed run's (fingerprint "
                                      f"{data.fingerprint()} vs {saved['data_fingerprint']}); resume with the same "
                                      "data.* settings and files")

        state, _ = ckpt.restore_newest_good(abstract, check_meta)
    else:
        if ckpt.latest_step() is not None:
            raise CheckpointError(f"{ckpt.directory} already holds checkpoints (step {ckpt.latest_step()}); "
                                  "pass --resume to continue, or set train.output_dir to a new folder")
        state = jax.jit(init_state, out_shardings=state_shardings)(init_key)
    start = int(jax.device_get(state.step))
    meta = {"data_fingerprint": data.fingerprint(), "config": cfg.raw}

    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.raw, sort_keys=False))
        if changes:
            append_record(out / "resumes.jsonl", {"step": start, "changed": changes})
    writer = MetricsWriter(out, tc.tensorboard, start if resume else None) if is_main else None
    step_fn = jit_train_step(make_train_step(model, student, optimizer, tc), mesh, state_shardings, frozen_shardings)
    tokens_sharding = batch_sharding(mesh)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    layers = tuple(student.consumer_layers)

    bar = tqdm(total=tc.steps, initial=start, disable=not (tc.progress and is_main), desc="train", unit="step")
    row: dict[str, Any] = {}
    timed_tokens, timed_seconds = 0, 0.0
    # the host reads metrics only at log and checkpoint steps (no sync per step): a non-finite
    # step changes nothing (the step skips its update), so `bad` (any non-finite step since the
    # last check) is checked before anything is saved or logged
    bad = jnp.zeros((), bool)
    first_bad = jnp.full((), -1, jnp.int32)
    mark, mark_step = time.perf_counter(), start
    warmup_steps = len(cfg.data.mixed_lengths) or 1
    try:
        for step in range(start, tc.steps):
            tokens = put_global(data.batch(step), tokens_sharding)
            state, metrics = step_fn(state, frozen, tokens, step_key)
            first_bad = jnp.where(bad | metrics["finite"], first_bad, step + 1)
            bad = bad | ~metrics["finite"]
            done = step + 1
            logs = done % tc.log_every == 0 or done == tc.steps
            if not (logs or done == start + warmup_steps or done % tc.save_every == 0 or done == tc.steps):
                bar.update(1)
                continue
            if bool(jax.device_get(bad)):  # the one sync, at log / checkpoint steps (and after the first)
                last = ckpt.latest_step()
                raise NonFiniteLossError(
                    f"non-finite loss or gradient at step {int(first_bad)}; nothing was saved after it (the "
                    f"metrics at step {done}: loss={float(metrics['loss'])}, grad_norm={float(metrics['grad_norm'])}). "
                    f"The last good checkpoint is {'step ' + str(last) if last is not None else 'none'} in "
                    f"{ckpt.directory}. Lower train.learning_rate or train.grad_clip, or check the data, then run "
                    "again with --resume."
                )
            now = time.perf_counter()
            tps = None
            if done == start + warmup_steps:  # a process compiles once per row length: those steps are not timed
                mark, mark_step = now, done
            elif done > start + warmup_steps:
                seconds, n = now - mark, done - mark_step
                timed_tokens, timed_seconds = timed_tokens + n * tokens_per_step, timed_seconds + seconds
                tps = n * tokens_per_step / seconds
                mark, mark_step = now, done
            ckpt.save(done, state, meta, force=done == tc.steps)
            if logs:
                row = _host_row(done, metrics, layers, tps, data.position(step)[0])
                if writer is not None:
                    writer.write(row)
                bar.set_postfix(loss=f"{row['loss']:.4g}", acc=f"{row['accuracy']:.3f}",
                                tok_s=f"{tps:.0f}" if tps else "-")
            bar.update(1)
    finally:
        bar.close()
        ckpt.close()
        if writer is not None:
            writer.close()
    export = _export_predictor(state.params, cfg, model_cfg, out / "predictor", is_main, tc.steps)
    sharded = [any(s.spec) for s in jax.tree.leaves(state_shardings.params)]
    summary = dict(row, steps=tc.steps, params_sharded=f"{sum(sharded)}/{len(sharded)} leaves over fsdp", mean_tokens_per_s=timed_tokens / timed_seconds if timed_seconds else None,
                   devices=len(jax.devices()), mesh=dict(mesh.shape), checkpoint=str(ckpt.directory),
                   predictor=str(export))
    if is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
