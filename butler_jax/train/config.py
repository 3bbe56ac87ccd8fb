"""Configuration of a training run: the `train:` and `data:` sections, validated up front.

`load_run_config(path, overrides)` reads a YAML file (with `base:` includes), applies
`section.key=value` overrides and returns a `RunConfig` holding the model, predictor, train and
data sections. Every bad value raises `ConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from butler_jax.config import ConfigError, ModelConfig, load_yaml, section

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where training text comes from and how it is cut into sequences.

    `sources`: local files or folders (.txt / .raw / .md: one document per file; .jsonl: one per
    record; .parquet: one per row), or `hf:<name>[:<config>]` for a Hugging Face dataset
    (split `hf_split`, column `text_field`). Relative paths are resolved against the repository.
    `max_documents` / `max_tokens` cap what is read of each source (a hub source is streamed and
    read no further than the cap).
    `tokenizer`: "model" (the model source's tokenizer), "bytes" (UTF-8 bytes, vocab 256, for
    random test models), or a tokenizer source (directory, .gguf, hub id).
    """

    sources: tuple[str, ...] = (
        "butler_jax/eval/data/wikitext-2-raw/wiki.valid.raw",
        "butler_jax/train/data/pg19-test-books",
    )
    tokenizer: str = "model"
    seq_len: int = 2048
    batch_size: int = 1  # global batch (all devices together)
    seed: int = 42
    text_field: str = "text"
    hf_split: str = "train"
    max_documents: Optional[int] = None  # cap on documents read per source (None: all)
    max_tokens: Optional[int] = None  # cap on tokens read per source, its last document cut (None: all)
    # row lengths taken in turn, each step holding batch_size * seq_len tokens (empty: seq_len only)
    mixed_lengths: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.sources:
            raise ConfigError("data.sources is empty; give at least one file, folder or hf:<name>")
        for name in ("seq_len", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name}={getattr(self, name)} must be >= 1")
        if self.seq_len < 2:
            raise ConfigError(f"data.seq_len={self.seq_len} must be >= 2")
        for name in ("max_documents", "max_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"data.{name}={getattr(self, name)} must be >= 1, or null for no cap")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, loss, sharding, checkpointing and logging of a predictor training run."""

    steps: int = 1000
    learning_rate: float = 1e-3
    warmup_fraction: float = 0.1  # linear warmup over this fraction of `steps`, then cosine
    end_lr_fraction: float = 0.0  # final learning rate as a fraction of `learning_rate`
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 20.0  # clip the global gradient norm to this (0: no clipping)
    skip_grad_norm: float = 20000.0  # skip the update when the pre-clip norm exceeds this (0: never)
    loss: Literal["mse", "kl"] = "mse"
    loss_region: Literal["causal", "full"] = "causal"  # "full": the paper's L x L quirk (MSE only)
    query_chunk: int = 256  # query rows per teacher-logit block (divides data.seq_len)
    loss_rows: int = 0  # query rows a sequence the loss uses, in whole blocks from its last half (0: all)
    top_fraction: float = 0.5  # accuracy: is the key in the true top fraction of its row
    metric_row_stride: int = 8  # accuracy / hit rate on every n-th query row (each needs a row sort)
    seed: int = 0  # predictor init and dropout
    mesh_data: int = 1  # devices on the "data" axis (-1: all left over)
    mesh_fsdp: int = -1  # devices on the "fsdp" axis (-1: all left over)
    shard_frozen: bool = False  # shard the frozen LLM's weights over "fsdp" (else replicate)
    output_dir: str = "runs/train"
    save_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 1
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        positive = ("steps", "query_chunk", "metric_row_stride", "save_every", "keep_checkpoints", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 1")
        if self.loss_rows < 0 or self.loss_rows % self.query_chunk:
            raise ConfigError(f"train.loss_rows={self.loss_rows} must be 0 (all rows) or a positive multiple "
                              f"of train.query_chunk={self.query_chunk}")
        if self.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate={self.learning_rate} must be > 0")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"train.warmup_fraction={self.warmup_fraction} must be in [0, 1)")
        if not 0 <= self.end_lr_fraction <= 1:
            raise ConfigError(f"train.end_lr_fraction={self.end_lr_fraction} must be in [0, 1]")
        if not 0 < self.top_fraction < 1:
            raise ConfigError(f"train.top_fraction={self.top_fraction} must be in (0, 1)")
        if self.grad_clip < 0 or self.skip_grad_norm < 0:
            raise ConfigError("train.grad_clip and train.skip_grad_norm must be >= 0 (0 turns them off)")
        for name in ("mesh_data", "mesh_fsdp"):
            value = getattr(self, name)
            if value == 0 or value < -1:
                raise ConfigError(f"train.{name}={value} must be a positive device count or -1")
        if self.mesh_data == -1 and self.mesh_fsdp == -1:
            raise ConfigError("at most one of train.mesh_data / train.mesh_fsdp may be -1")
        if self.loss == "kl" and self.loss_region == "full":
            raise ConfigError("train.loss_region=full only applies to train.loss=mse; use causal with kl")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs, plus the raw merged YAML mapping (saved with checkpoints)."""

    model: ModelConfig
    predictor: Any
    train: TrainConfig
    data: DataConfig
    raw: dict


def _predictor_config_class() -> type:
    from butler_jax import config as base_config

    cls = getattr(base_config, "PredictorConfig", None)
    if cls is None:
        raise ConfigError("butler_jax.config has no PredictorConfig; the predictor module is not installed")
    return cls


def check_mixed_lengths(lengths: tuple[int, ...], seq_len: int, batch_size: int, query_chunk: int) -> None:
    """Each length must cut the step's `batch_size * seq_len` tokens into whole rows and chunks."""
    tokens = batch_size * seq_len
    for length in lengths:
        if length > seq_len:
            raise ConfigError(f"data.mixed_lengths entry {length} exceeds data.seq_len={seq_len}; "
                              "data.seq_len is the longest row (set it to max(mixed_lengths))")
        if length < 2 or tokens % length:
            raise ConfigError(f"data.mixed_lengths entry {length} must be >= 2 and divide the step's "
                              f"data.batch_size * data.seq_len = {tokens} tokens")
        if length % query_chunk and query_chunk < length:
            raise ConfigError(f"train.query_chunk={query_chunk} must divide data.mixed_lengths entry {length}")


def build_run_config(raw: dict[str, Any]) -> RunConfig:
    """Validate every section of a merged config mapping."""
    allowed = {"model", "predictor", "train", "data"}
    extra = sorted(set(raw) - allowed - {"sparsity", "eval"})
    if extra:
        raise ConfigError(f"unknown config section {extra[0]!r}; allowed sections: {', '.join(sorted(allowed))}")
    cfg = RunConfig(
        model=section(raw, "model", ModelConfig),
        predictor=section(raw, "predictor", _predictor_config_class()),
        train=section(raw, "train", TrainConfig),
        data=section(raw, "data", DataConfig),
        raw=raw,
    )
    if cfg.data.seq_len % cfg.train.query_chunk and cfg.train.query_chunk < cfg.data.seq_len:
        raise ConfigError(
            f"train.query_chunk={cfg.train.query_chunk} must divide data.seq_len={cfg.data.seq_len}"
        )
    check_mixed_lengths(cfg.data.mixed_lengths, cfg.data.seq_len, cfg.data.batch_size, cfg.train.query_chunk)
    if cfg.data.seq_len > cfg.model.max_position_embeddings:
        raise ConfigError(
            f"data.seq_len={cfg.data.seq_len} exceeds model.max_position_embeddings="
            f"{cfg.model.max_position_embeddings}"
        )
    return cfg


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, merge and validate a training config file."""
    return build_run_config(load_yaml(path, overrides))


# Settings a resumed run may change: they affect logging and bookkeeping, not the computed state.
SAFE_ON_RESUME = ("train.progress", "train.tensorboard", "train.log_every", "train.save_every",
                  "train.keep_checkpoints", "train.output_dir")
_SAFE_SECTIONS = ("eval", "sparsity")  # read by evaluate.py, not by training


def _dotted(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_dotted(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def resume_changes(saved_raw: dict, raw: dict) -> dict[str, list]:
    """{key: [checkpointed value, new value]} of the safe settings a resume changes.

    Raises ConfigError naming the first other setting that differs from the checkpointed run's:
    resuming under it would mix two runs (another predictor shape, another learning-rate schedule).
    """
    canon = lambda tree: _dotted(yaml.safe_load(yaml.safe_dump(tree)))  # noqa: E731 - tuples -> lists
    old, new = canon(saved_raw), canon(raw)
    changes = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    for key, (before, after) in changes.items():
        if key not in SAFE_ON_RESUME and key.split(".")[0] not in _SAFE_SECTIONS:
            raise ConfigError(f"--resume with {key}={after!r}, but the checkpointed run used {key}={before!r}",
                              fix=f"resume with {key}={before!r}, or start a new run in another train.output_dir "
                                  f"(settings a resume may change: {', '.join(SAFE_ON_RESUME)})")
    return changes


def resolve_path(path: str) -> Path:
    """A user path as given if it exists, else relative to the repository root."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p
