"""Token-selection policies behind one contract (base.py), filed in one registry by method name.

`SparsityConfig` is the `sparsity:` config section and the static settings every policy holds;
`make_policy` turns a section into (policy, policy params) through the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from butler_jax.config import ConfigError, ModelConfig
from butler_jax.sparsity import dense, h2o, oracle, quest, snapkv, streamingllm, tokenbutler  # noqa: F401 (register)
from butler_jax.sparsity.base import POLICIES, Policy, PolicyParams
from butler_jax.sparsity.budget import Budget, parse_budget
from butler_jax.sparsity.dense import DensePolicy

_ORDER = ("dense", "tokenbutler", "oracle", "h2o", "snapkv", "quest", "streamingllm")
METHODS: tuple[str, ...] = tuple(sorted(POLICIES, key=lambda m: _ORDER.index(m) if m in _ORDER else len(_ORDER)))
Method = Literal[METHODS]  # type: ignore[valid-type]


@dataclass(frozen=True)
class SparsityConfig:
    """The `sparsity:` config section, held by every policy as its static settings.

    budget: kept tokens per (selection head, query row), forced tokens included: a count (2048),
    a keep fraction (0.5) or `fixed_50pc` (50 % sparsity); n_sink / n_window: first / most recent
    tokens always kept (inside the budget; a row whose budget cannot hold them all forces only the current token);
    granularity: one selection per KV head ("kv", shared by its GQA group) or per query head;
    dense_layers: the first layers attend densely; implementation: kernels "auto"/"pallas"/"xla";
    sim_chunk: query rows per chunk in decode-simulated prefill (memory O(chunk x length)).
    The rest belong to one method each (named in the comment).
    """

    method: Method = "dense"
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
    heavy_fraction: float = 0.5  # h2o: share of the budget after the sinks for heavy hitters (rest: recent)
    predict_interval: int = 1  # tokenbutler
    neighbor_fetch: bool = False  # tokenbutler

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"sparsity.method={self.method!r} is unknown; choose one of {list(METHODS)}")
        for name in ("page_size", "observation_window", "pool_kernel", "predict_interval", "sim_chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sparsity.{name}={getattr(self, name)} must be >= 1")
        for name in ("n_sink", "n_window", "dense_layers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"sparsity.{name}={getattr(self, name)} must be >= 0")
        if not 0 <= self.heavy_fraction <= 1:
            raise ConfigError(f"sparsity.heavy_fraction={self.heavy_fraction} must be in [0, 1]")
        parse_budget(self.budget)

    @property
    def token_budget(self) -> Budget:
        """The parsed `budget`."""
        return parse_budget(self.budget)


def make_policy(sparsity: SparsityConfig, cfg: ModelConfig, predictor: Any = None) -> tuple[Policy, PolicyParams]:
    """(policy, its traced parameters) for a config section; TokenButler needs `predictor`:
    (module, params) of a trained predictor (its params become the policy params)."""
    method = sparsity.method
    if method != "tokenbutler" and (sparsity.neighbor_fetch or sparsity.predict_interval != 1):
        raise ValueError(f"sparsity.neighbor_fetch / predict_interval apply to tokenbutler only, not method={method!r}; "
                         "reset them to false / 1")
    return POLICIES[method].build(sparsity, cfg, predictor)


__all__ = ["Budget", "DensePolicy", "METHODS", "POLICIES", "Policy", "PolicyParams", "SparsityConfig", "make_policy",
           "parse_budget"]
