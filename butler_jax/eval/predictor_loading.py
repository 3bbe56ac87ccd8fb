"""The predictor evaluate.py uses for TokenButler: the config's `predictor.checkpoint`."""

from __future__ import annotations

from butler_jax.config import ModelConfig, PredictorConfig, section
from butler_jax.models.predictor_io import load_predictor
from butler_jax.paths import resolve_data


def load_predictor_for_eval(data: dict, mcfg: ModelConfig):
    """(module, params) for make_policy, with a clear error when no checkpoint is configured."""
    pcfg = section(data, "predictor", PredictorConfig)
    if not pcfg.checkpoint:
        raise ValueError("eval.methods includes tokenbutler but predictor.checkpoint is empty; train one with "
                         "`python train.py --config configs/train_smollm2.yaml` or drop tokenbutler from eval.methods")
    path = resolve_data(pcfg.checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"predictor.checkpoint={pcfg.checkpoint!r} is not a directory")
    module, params, _ = load_predictor(path, mcfg)
    return module, params
