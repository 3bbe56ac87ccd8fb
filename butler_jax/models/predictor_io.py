"""Saving and loading trained predictors (butler-jax format: predictor.safetensors + predictor.json)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import ml_dtypes
import numpy as np

from butler_jax.config import ModelConfig, PredictorConfig, from_dict
from butler_jax.errors import CheckpointError
from butler_jax.models.predictor import PaperPredictor
from butler_jax.models.predictor_adapter import count_params
from butler_jax.models.predictor_longctx import LongctxPredictor
from butler_jax.weights.flax_checkpoint import load_tree, save_tree

NAME = "predictor"


def save_predictor(params: dict, pcfg: PredictorConfig, mcfg: ModelConfig, directory: str | Path, extra: dict | None = None) -> Path:
    """Write the predictor with its config and the model shape it was trained for."""
    meta = {"predictor": dataclasses.asdict(pcfg), "model_shape": _shape(mcfg), **(extra or {})}
    return save_tree(jax.device_get(params), directory, NAME, meta)


def _shape(mcfg: ModelConfig) -> dict:
    return {k: getattr(mcfg, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")}


__all__ = ["count_params", "load_predictor", "save_predictor"]


def load_predictor(directory: str | Path, mcfg: ModelConfig) -> tuple[PaperPredictor | LongctxPredictor, dict, PredictorConfig]:
    """(module, params, config) of a saved predictor, checked against the model's shape; weights
    stored in bfloat16 (the shipped long-context predictor, to keep the package small) come back as float32."""
    params, meta = load_tree(directory, NAME)
    params = jax.tree_util.tree_map(lambda a: a.astype(np.float32) if a.dtype == ml_dtypes.bfloat16 else a, params)
    pcfg = from_dict(PredictorConfig, {**meta["predictor"], "checkpoint": str(directory)}, "predictor")
    if meta.get("model_shape") != _shape(mcfg):
        raise CheckpointError(
            f"predictor in {str(directory)!r} was trained for a model of shape {meta.get('model_shape')}, "
            f"but the loaded model has {_shape(mcfg)}"
        )
    count = sum(v.size for v in jax.tree_util.tree_leaves(params))
    if count != count_params(pcfg, mcfg):
        raise CheckpointError(f"predictor in {str(directory)!r} holds {count} parameters, expected {count_params(pcfg, mcfg)}")
    module = PaperPredictor(pcfg, mcfg) if pcfg.kind == "paper" else LongctxPredictor(pcfg, mcfg)
    return module, params, pcfg
