"""The backbone (any supported family) in butler-jax's own checkpoint format: `model.safetensors` (flattened Flax tree,
"/"-joined keys, dtypes kept) + `model.json` ({"model": the ModelConfig})."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from butler_jax.config import ModelConfig, from_dict
from butler_jax.weights.flax_checkpoint import load_tree, save_tree

NAME = "model"


def is_jax_model_dir(path: str | Path) -> bool:
    """Whether `path` is a directory written by `save_jax_model`."""
    return (Path(path) / f"{NAME}.json").is_file() and (Path(path) / f"{NAME}.safetensors").is_file()


def save_jax_model(params: dict, cfg: ModelConfig, directory: str | Path) -> Path:
    """Write the backbone params and config into `directory`."""
    return save_tree(params, directory, NAME, {"model": dataclasses.asdict(cfg)})


def load_jax_model(directory: str | Path) -> tuple[ModelConfig, dict]:
    """(config, params as numpy) written by `save_jax_model`."""
    params, meta = load_tree(directory, NAME)
    return from_dict(ModelConfig, meta["model"], "model"), params
