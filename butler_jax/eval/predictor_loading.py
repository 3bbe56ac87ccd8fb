"""The predictor evaluate.py uses for TokenButler: the config's `predictor.checkpoint`."""

from __future__ import annotations

from butler_jax.config import ModelConfig, PredictorConfig, section
from butler_jax.errors import ConfigError
from butler_jax.models.predictor_io import load_predictor
from butler_jax.paths import resolve_data


def predictor_path(data: dict) -> Path:
    """The configured predictor directory, or ConfigError when it is unset or missing (checked before loading)."""
    pcfg = section(data, "predictor", PredictorConfig)
    if not pcfg.checkpoint:
        raise ConfigError("eval.methods includes tokenbutler but predictor.checkpoint is empty; train one with "
                         "`python train.py --config configs/train_smollm2.yaml` or drop tokenbutler from eval.methods")
    path = resolve_data(pcfg.checkpoint)
    if not path.is_dir():
        raise ConfigError(f"predictor.checkpoint={pcfg.checkpoint!r} is not a directory",
                          fix="give a folder written by train.py or convert_torch.py predictor-to-jax")
    return path


def load_predictor_for_eval(data: dict, mcfg: ModelConfig):
    """(module, params) for make_policy."""
    module, params, _ = load_predictor(predictor_path(data), mcfg)
    return module, params
