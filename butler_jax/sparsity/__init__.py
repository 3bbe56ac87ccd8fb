"""Token-selection policies behind one interface (see base.py); `make_policy` builds one from config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from butler_jax.config import ModelConfig
from butler_jax.sparsity.budget import Budget, parse_budget
from butler_jax.sparsity.dense import DensePolicy
from butler_jax.sparsity.oracle import OraclePolicy
from butler_jax.sparsity.quest import QuestPolicy
from butler_jax.sparsity.scored import SelectionSettings
from butler_jax.sparsity.streamingllm import StreamingLLMPolicy

METHODS = ("dense", "oracle", "tokenbutler", "h2o", "snapkv", "quest", "streamingllm")


@dataclass(frozen=True)
class SparsityConfig:
    """The `sparsity:` config section. `budget`: tokens (2048), keep fraction (0.5) or `fixed_50pc`."""

    method: Literal["dense", "oracle", "tokenbutler", "h2o", "snapkv", "quest", "streamingllm"] = "dense"
    budget: str = "fixed_50pc"
    n_sink: int = 4
    n_window: int = 0
    granularity: Literal["kv", "query"] = "kv"
    dense_layers: int = 1
    implementation: Literal["auto", "pallas", "xla"] = "auto"
    sim_chunk: int = 256
    page_size: int = 16  # quest
    observation_window: int = 32  # snapkv
    pool_kernel: int = 7  # snapkv
    heavy_fraction: float = 0.5  # h2o: share of the budget for heavy hitters (rest: recent tokens)
    predict_interval: int = 1  # tokenbutler
    neighbor_fetch: bool = False  # tokenbutler

    def settings(self) -> SelectionSettings:
        return SelectionSettings(
            budget=parse_budget(self.budget), n_sink=self.n_sink, n_window=self.n_window,
            granularity=self.granularity, dense_layers=self.dense_layers,
            implementation=self.implementation, sim_chunk=self.sim_chunk,
        )


def make_policy(sparsity: SparsityConfig, cfg: ModelConfig, predictor: Any = None):
    """The policy object for a config section (TokenButler needs `predictor`: (module, params))."""
    method = sparsity.method
    if method != "tokenbutler" and (sparsity.neighbor_fetch or sparsity.predict_interval != 1):
        raise ValueError(f"sparsity.neighbor_fetch / predict_interval apply to tokenbutler only, not method={method!r}; "
                         "reset them to false / 1")
    if method == "dense":
        return DensePolicy(sparsity.implementation)
    settings = sparsity.settings()
    if method == "oracle":
        return OraclePolicy(settings, cfg)
    if method == "streamingllm":
        return StreamingLLMPolicy(settings, cfg)
    if method == "quest":
        return QuestPolicy(settings, cfg, sparsity.page_size)
    if method == "h2o":
        from butler_jax.sparsity.h2o import H2OPolicy

        return H2OPolicy(settings, cfg, heavy_fraction=sparsity.heavy_fraction)
    if method == "snapkv":
        from butler_jax.sparsity.snapkv import SnapKVPolicy

        return SnapKVPolicy(settings, cfg, window=sparsity.observation_window, pool_kernel=sparsity.pool_kernel)
    if method == "tokenbutler":
        if predictor is None:
            raise ValueError("sparsity.method=tokenbutler needs a trained predictor: set predictor.checkpoint in the config")
        from butler_jax.sparsity.tokenbutler import make_tokenbutler

        return make_tokenbutler(settings, cfg, predictor, predict_interval=sparsity.predict_interval,
                                neighbor_fetch=sparsity.neighbor_fetch)
    raise ValueError(f"sparsity.method={method!r} is unknown; choose one of {list(METHODS)}")


__all__ = ["Budget", "DensePolicy", "METHODS", "SelectionSettings", "SparsityConfig", "make_policy", "parse_budget"]
