"""Weight loading: one entry point, `load_model(source, dtype)`, for every supported source."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from butler_jax.config import ModelConfig
from butler_jax.weights.embedded import embedded_gguf_path
from butler_jax.errors import CheckpointError
from butler_jax.weights.gguf_file import load_gguf_model
from butler_jax.weights.hf import load_hf_model, save_hf_directory
from butler_jax.weights.names import hf_state_dict_to_params, params_to_hf_state_dict
from butler_jax.weights.tokenizer import load_tokenizer


def load_model(source: str, dtype: str = "float32") -> tuple[ModelConfig, dict]:
    """(config, Flax params as numpy) from "embedded", a .gguf file, an HF directory or a hub id."""
    if source == "embedded":
        return load_gguf_model(embedded_gguf_path(), dtype)
    if source.endswith(".gguf"):
        return load_gguf_model(Path(source).expanduser(), dtype)
    return load_hf_model(source, dtype)


def model_from_config(cfg: ModelConfig) -> tuple[ModelConfig, dict]:
    """Params for a model section: random init when `source: random`, else loaded from the source."""
    if cfg.source == "random":
        from butler_jax.models.llama import init_params

        return cfg, init_params(cfg)
    loaded_cfg, params = load_model(cfg.source, cfg.dtype)
    return dataclasses.replace(loaded_cfg, seed=cfg.seed), params


__all__ = [
    "CheckpointError",
    "embedded_gguf_path",
    "hf_state_dict_to_params",
    "load_model",
    "load_tokenizer",
    "model_from_config",
    "params_to_hf_state_dict",
    "save_hf_directory",
]
