"""Hugging Face Llama checkpoints: local directories and hub ids, both directions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from butler_jax.config import ModelConfig, RopeScaling
from butler_jax.errors import CheckpointError
from butler_jax.weights.names import hf_state_dict_to_params, params_to_hf_state_dict
from butler_jax.weights.tensors import read_state_dict_dir, write_safetensors

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
BUTLER_MODEL_TYPE = "llama_butler"  # an HF Butler model: Llama backbone + TokenButler predictor (remote code)


def _rope_scaling(hf: dict) -> tuple[float, RopeScaling]:
    """(rope_theta, scaling) from either transformers 4 (`rope_scaling`) or 5 (`rope_parameters`)."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    params.update({k: v for k, v in legacy.items() if k not in params})
    theta = float(params.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "linear", "llama3"):
        raise CheckpointError(f"rope type {rope_type!r} is not supported; use default, linear or llama3")
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return theta, RopeScaling(rope_type=rope_type, **{k: params[k] for k in keys if k in params})


def config_from_hf(hf: dict, dtype: str = "float32", source: str = "random") -> ModelConfig:
    """ModelConfig from an HF `config.json` mapping; unknown architectures are refused."""
    archs = hf.get("architectures") or ["LlamaForCausalLM"]
    if hf.get("model_type", "llama") != "llama" or not set(archs) & set(SUPPORTED_ARCHITECTURES):
        raise CheckpointError(
            f"unsupported architecture {archs} (model_type {hf.get('model_type')!r}); "
            f"butler-jax loads {', '.join(SUPPORTED_ARCHITECTURES)} only"
        )
    theta, scaling = _rope_scaling(hf)
    eos = hf.get("eos_token_id")
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=hf["num_attention_heads"],
        num_key_value_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim"),
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=theta,
        rope_scaling=scaling,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=eos[0] if isinstance(eos, list) else eos,
        dtype=dtype,
        source=source,
    )


def config_to_hf(cfg: ModelConfig, torch_dtype: str = "float32") -> dict:
    """An HF `config.json` mapping for `cfg` (both rope key styles, for transformers 4 and 5)."""
    rope = {"rope_type": cfg.rope_scaling.rope_type, "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling.rope_type != "default":
        rope["factor"] = cfg.rope_scaling.factor
    if cfg.rope_scaling.rope_type == "llama3":
        rope.update(
            low_freq_factor=cfg.rope_scaling.low_freq_factor,
            high_freq_factor=cfg.rope_scaling.high_freq_factor,
            original_max_position_embeddings=cfg.rope_scaling.original_max_position_embeddings,
        )
    legacy = {k: v for k, v in rope.items() if k != "rope_theta"} if cfg.rope_scaling.rope_type != "default" else None
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.resolved_head_dim,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": legacy,
        "rope_parameters": rope,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": torch_dtype,
    }


def resolve_hf_source(source: str) -> Path:
    """A local directory as is, else download a hub id (clear error when the hub is unreachable)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise CheckpointError(
            f"model source {source!r} is neither an existing directory nor a hub id like 'org/name'"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as exc:
        raise CheckpointError(
            f"could not download {source!r} from the Hugging Face hub ({type(exc).__name__}: {exc}); "
            "without network access, pass a local directory holding config.json and the weights"
        ) from exc


def load_hf_llama(source: str, dtype: str = "float32") -> tuple[ModelConfig, dict]:
    """(config, Flax params) from an HF Llama directory or hub id, cast to `dtype`."""
    directory = resolve_hf_source(source)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{str(directory)!r} has no config.json; is it a Hugging Face model directory?")
    raw = json.loads(config_file.read_text())
    butler = raw.get("model_type") == BUTLER_MODEL_TYPE  # a Llama plus predictor tensors in layer 0's attention
    if butler:
        raw = {**raw, "model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    cfg = config_from_hf(raw, dtype=dtype, source=str(source))
    state = read_state_dict_dir(directory)
    if butler:  # the predictor is read by weights.predictor_torch.read_hf_butler
        state = {k: v for k, v in state.items() if ".self_attn.sparse_" not in k}
    params = hf_state_dict_to_params(state, cfg)
    return cfg, cast_tree(params, dtype)


def cast_tree(params: dict, dtype: str) -> dict:
    """Cast every array of a nested dict to float32 or bfloat16 (numpy)."""
    import ml_dtypes

    target = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32
    return {
        k: cast_tree(v, dtype) if isinstance(v, dict) else np.asarray(v).astype(target)
        for k, v in params.items()
    }


def save_hf_directory(params: dict, cfg: ModelConfig, out_dir: str | Path, tokenizer=None) -> Path:
    """Write `config.json` + `model.safetensors` (+ tokenizer files) loadable by `from_pretrained`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = params_to_hf_state_dict(params, cfg)
    dtype = "bfloat16" if cfg.dtype == "bfloat16" else "float32"
    (out / "config.json").write_text(json.dumps(config_to_hf(cfg, dtype), indent=2))
    write_safetensors(state, out / "model.safetensors", metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out
