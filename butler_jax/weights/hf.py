"""Hugging Face checkpoints of the supported families (Llama, Mistral, Qwen2/2.5, Qwen3, Phi-3): local
directories and hub ids, both directions; the family comes from config.json's `model_type`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from butler_jax.config import ModelConfig, RopeScaling
from butler_jax.errors import CheckpointError
from butler_jax.weights.names import hf_state_dict_to_params, params_to_hf_state_dict
from butler_jax.weights.tensors import read_state_dict_dir, write_safetensors

# family (config.json model_type) -> its transformers architecture
FAMILIES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
}
SUPPORTED_ARCHITECTURES = tuple(FAMILIES.values())
ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh")
ROPE_TYPES = ("default", "linear", "llama3", "longrope")
# config.json fields that never change the computation (training-time dropout, bookkeeping, generation)
NEUTRAL_FIELDS = frozenset({
    "_name_or_path", "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "use_cache",
    "initializer_range", "attention_dropout", "embd_pdrop", "resid_pdrop", "pad_token_id", "bos_token_id",
    "eos_token_id", "auto_map", "output_attentions", "output_hidden_states", "return_dict", "is_encoder_decoder",
    "id2label", "label2id", "problem_type", "chunk_size_feed_forward", "tokenizer_class", "pretraining_tp",
    "max_position_embeddings", "use_return_dict", "is_decoder", "add_cross_attention", "tie_encoder_decoder",
    "is_llama_config", "transformers.js_config", "task_specific_params", "finetuning_task", "torchscript",
    "use_bfloat16", "tf_legacy_loss", "pruned_heads", "sep_token_id", "decoder_start_token_id",
    # generation defaults that transformers 4 wrote into config.json
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
    "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
})
# fields accepted only at the value that means "as transformers computes without them"
OFF_FIELDS = {"rope_interleaved": False, "use_mrope": False}
# fields each family reads (besides the shape fields every family has)
_COMMON = frozenset({
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
    "tie_word_embeddings", "hidden_act",
})
_FAMILY_FIELDS = {
    "llama": {"attention_bias", "mlp_bias"},
    "mistral": {"sliding_window", "layer_types"},
    "qwen2": {"sliding_window", "use_sliding_window", "max_window_layers", "layer_types"},
    "qwen3": {"attention_bias", "sliding_window", "use_sliding_window", "max_window_layers", "layer_types"},
    "phi3": {"sliding_window", "original_max_position_embeddings", "partial_rotary_factor", "attention_bias"},
}
BUTLER_MODEL_TYPE = "llama_butler"  # an HF Butler model: Llama backbone + TokenButler predictor (remote code)
# predictor settings an HF Butler config.json adds to the Llama fields (read by weights.predictor_torch)
BUTLER_FIELDS = ("producer_frequency", "dDash", "intdim", "attn_reduce_factor", "eval_llm_mode", "token_sparse_method")


def _refuse(family: str, field: str, value, why: str) -> CheckpointError:
    return CheckpointError(f"config.json field {field}={value!r} ({family}): {why}")


def family_of(hf: dict) -> str:
    """The family named by config.json's `model_type` (or, without one, its `architectures`)."""
    archs = list(hf.get("architectures") or [])
    model_type = hf.get("model_type")
    if model_type is None:
        known = [f for f, arch in FAMILIES.items() if arch in archs]
        model_type = known[0] if known else None
    if model_type not in FAMILIES or (archs and FAMILIES[model_type] not in archs):
        supported = ", ".join(f"{f} ({a})" for f, a in FAMILIES.items())
        raise CheckpointError(
            f"unsupported model: model_type {hf.get('model_type')!r}, architectures {archs}; "
            f"butler-jax supports the families {supported}"
        )
    return model_type


def _rope_scaling(hf: dict, family: str) -> tuple[float, float, RopeScaling]:
    """(rope_theta, partial_rotary_factor, scaling) from transformers 4 (`rope_scaling`) or 5
    (`rope_parameters`); every key of the rope mapping is either used or refused."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    params.update({k: v for k, v in legacy.items() if k not in params})
    theta = float(params.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    partial = float(params.pop("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)))
    if partial != 1.0 and family != "phi3":
        raise _refuse(family, "partial_rotary_factor", partial, "transformers applies it for phi3 only; refusing")
    rope_type = params.pop("rope_type", None) or params.pop("type", "default")
    params.pop("type", None)
    if family == "phi3" and rope_type in ("su", "yarn"):
        rope_type = "longrope"  # transformers' Phi3Config maps both to longrope
    if rope_type not in ROPE_TYPES:
        raise _refuse(family, "rope_scaling.rope_type", rope_type, f"supported rope types: {', '.join(ROPE_TYPES)}")
    used = {"default": (), "linear": ("factor",),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
            "longrope": ("factor", "short_factor", "long_factor", "attention_factor",
                         "original_max_position_embeddings")}[rope_type]
    for key, value in params.items():
        if key not in used and value is not None:
            raise _refuse(family, f"rope_scaling.{key}", value, f"not used by rope type {rope_type!r}; refusing "
                          "rather than ignoring it")
    kwargs = {k: params[k] for k in used if params.get(k) is not None}
    if rope_type == "longrope":
        kwargs.setdefault("original_max_position_embeddings",
                          hf.get("original_max_position_embeddings", hf.get("max_position_embeddings")))
        # transformers: without a factor, the ratio of the position limits (sets the attention factor)
        kwargs.setdefault("factor", hf.get("max_position_embeddings", 4096) / kwargs["original_max_position_embeddings"])
        for key in ("short_factor", "long_factor"):
            if key not in kwargs:
                raise _refuse(family, "rope_scaling", legacy or params, f"longrope needs {key}")
            kwargs[key] = tuple(float(x) for x in kwargs[key])
    return theta, partial, RopeScaling(rope_type=rope_type, **kwargs)


def _sliding(hf: dict, family: str, layers: int) -> tuple[int | None, int]:
    """(sliding_window or None, first sliding layer) as transformers reads them per family."""
    window = hf.get("sliding_window")
    if family in ("qwen2", "qwen3"):
        if not hf.get("use_sliding_window", False):
            window = None
        first = int(hf.get("max_window_layers", 28))
        if hf.get("layer_types") is not None:
            types = list(hf["layer_types"])
            n_full = types.count("full_attention")
            expected = ["full_attention"] * n_full + ["sliding_attention"] * (layers - n_full)
            if types != expected or len(types) != layers:
                raise _refuse(family, "layer_types", types, "only full-attention layers followed by sliding "
                              "ones are supported")
            first = n_full
            if n_full == layers:
                window = None
            elif window is None:
                raise _refuse(family, "layer_types", types, "names sliding layers but sliding_window is null")
        return window, (min(first, layers) if window is not None else 0)
    if family == "mistral" and hf.get("layer_types") is not None:
        raise _refuse(family, "layer_types", hf["layer_types"], "transformers' Mistral ignores per-layer types; "
                      "this checkpoint is meant for another architecture (e.g. Ministral)")
    return window, 0


def _biases(hf: dict, family: str) -> tuple[bool, bool, bool]:
    """(qkv_bias, o_bias, mlp_bias) as transformers builds each family's projections."""
    attention_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
    if family == "llama":
        return attention_bias, attention_bias, mlp_bias
    if family == "qwen3":
        return attention_bias, attention_bias, False
    if attention_bias:
        raise _refuse(family, "attention_bias", True, "transformers builds this family without attention biases")
    return family == "qwen2", False, False


def config_from_hf(hf: dict, dtype: str = "float32", source: str = "random", strict: bool = True) -> ModelConfig:
    """ModelConfig from an HF `config.json` mapping of a supported family.

    Every field that changes the computation is implemented or refused (CheckpointError naming the
    field and value); with `strict`, fields butler-jax does not know are refused as well (pass
    strict=False to read only the dims of a config that carries extra, non-model keys)."""
    family = family_of(hf)
    known = NEUTRAL_FIELDS | _COMMON | _FAMILY_FIELDS[family] | set(OFF_FIELDS)
    for field, value in hf.items():
        if field in OFF_FIELDS and value != OFF_FIELDS[field]:
            raise _refuse(family, field, value, f"only {OFF_FIELDS[field]!r} is supported")
        if strict and field not in known:
            raise _refuse(family, field, value, "not understood by butler-jax; it may change the computation, "
                          "so the checkpoint is refused rather than run without it")
    act = hf.get("hidden_act", "silu")
    if act not in ACTIVATIONS:
        raise _refuse(family, "hidden_act", act, f"supported activations: {', '.join(ACTIVATIONS)}")
    theta, partial, scaling = _rope_scaling(hf, family)
    layers = hf["num_hidden_layers"]
    window, first_sliding = _sliding(hf, family, layers)
    qkv_bias, o_bias, mlp_bias = _biases(hf, family)
    default_head_dim = 128 if family == "qwen3" else None  # Qwen3Config's default when config.json omits it
    eos = hf.get("eos_token_id")
    defaults = {"llama": 2048, "mistral": 131072, "qwen2": 32768, "qwen3": 32768, "phi3": 4096}
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_hidden_layers=layers,
        num_attention_heads=hf["num_attention_heads"],
        num_key_value_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or default_head_dim,
        max_position_embeddings=hf.get("max_position_embeddings", defaults[family]),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-5 if family == "phi3" else 1e-6),
        rope_theta=theta,
        rope_scaling=scaling,
        partial_rotary_factor=partial,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        family=family,
        hidden_act=act,
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=mlp_bias,
        qk_norm=family == "qwen3",
        sliding_window=window,
        sliding_window_from_layer=first_sliding,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=eos[0] if isinstance(eos, list) else eos,
        dtype=dtype,
        source=source,
    )


def _check_exportable(cfg: ModelConfig) -> None:
    """Refuse a config whose options the family's transformers class cannot express."""
    fixed = {  # option -> value the family's class hard-codes (None: free)
        "llama": {"qk_norm": False, "sliding_window": None},
        "mistral": {"qkv_bias": False, "o_bias": False, "mlp_bias": False, "qk_norm": False},
        "qwen2": {"qkv_bias": True, "o_bias": False, "mlp_bias": False, "qk_norm": False},
        "qwen3": {"mlp_bias": False, "qk_norm": True},
        "phi3": {"qkv_bias": False, "o_bias": False, "mlp_bias": False, "qk_norm": False},
    }[cfg.family]
    for name, value in fixed.items():
        if getattr(cfg, name) != value:
            raise CheckpointError(f"model.{name}={getattr(cfg, name)!r} cannot be written as a {cfg.family} "
                                  f"checkpoint ({FAMILIES[cfg.family]} has {value!r})")
    if cfg.family == "llama" and cfg.qkv_bias != cfg.o_bias:
        raise CheckpointError("model.qkv_bias and model.o_bias must be equal for llama (one attention_bias flag)")
    if cfg.family == "qwen3" and cfg.qkv_bias != cfg.o_bias:
        raise CheckpointError("model.qkv_bias and model.o_bias must be equal for qwen3 (one attention_bias flag)")
    if cfg.partial_rotary_factor != 1.0 and cfg.family != "phi3":
        raise CheckpointError(f"model.partial_rotary_factor={cfg.partial_rotary_factor} is phi3-only in transformers")
    if cfg.sliding_window is not None and cfg.sliding_window_from_layer and cfg.family not in ("qwen2", "qwen3"):
        raise CheckpointError(f"model.sliding_window_from_layer={cfg.sliding_window_from_layer}: {cfg.family} "
                              "slides on every layer or none")
    if cfg.rope_scaling.rope_type == "longrope" and cfg.family != "phi3":
        raise CheckpointError(f"rope type longrope is written for phi3 only, not {cfg.family}")


def _rope_to_hf(cfg: ModelConfig) -> dict:
    s = cfg.rope_scaling
    rope = {"rope_type": s.rope_type, "rope_theta": cfg.rope_theta}
    if s.rope_type != "default":
        rope["factor"] = s.factor
    if s.rope_type == "llama3":
        rope.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                    original_max_position_embeddings=s.original_max_position_embeddings)
    if s.rope_type == "longrope":
        rope.update(short_factor=list(s.short_factor), long_factor=list(s.long_factor),
                    original_max_position_embeddings=s.original_max_position_embeddings)
        if s.attention_factor is not None:
            rope["attention_factor"] = s.attention_factor
    if cfg.family == "phi3":
        rope["partial_rotary_factor"] = cfg.partial_rotary_factor
    return rope


def config_to_hf(cfg: ModelConfig, torch_dtype: str = "float32") -> dict:
    """An HF `config.json` mapping for `cfg` in its family's layout (both rope key styles, for
    transformers 4 and 5); options the family's class cannot express are refused."""
    _check_exportable(cfg)
    rope = _rope_to_hf(cfg)
    legacy = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
    out = {
        "architectures": [FAMILIES[cfg.family]],
        "model_type": cfg.family,
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
        "rope_scaling": legacy if cfg.rope_scaling.rope_type != "default" else None,
        "rope_parameters": rope,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": None,
        "hidden_act": cfg.hidden_act,
        "torch_dtype": torch_dtype,
    }
    if cfg.family == "llama":
        out.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
    if cfg.family == "qwen3":
        out["attention_bias"] = cfg.qkv_bias
    if cfg.family in ("mistral", "phi3"):
        out["sliding_window"] = cfg.sliding_window
    if cfg.family in ("qwen2", "qwen3"):
        out.update(use_sliding_window=cfg.sliding_window is not None, sliding_window=cfg.sliding_window,
                   max_window_layers=cfg.sliding_window_from_layer if cfg.sliding_window is not None
                   else cfg.num_hidden_layers)
    if cfg.family == "phi3":
        out["partial_rotary_factor"] = cfg.partial_rotary_factor  # transformers 5 reads it beside rope_scaling
        out["original_max_position_embeddings"] = cfg.rope_scaling.original_max_position_embeddings \
            if cfg.rope_scaling.rope_type == "longrope" else cfg.max_position_embeddings
    return out


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


def load_hf_model(source: str, dtype: str = "float32") -> tuple[ModelConfig, dict]:
    """(config, Flax params) from an HF directory or hub id of a supported family, cast to `dtype`."""
    directory = resolve_hf_source(source)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{str(directory)!r} has no config.json; is it a Hugging Face model directory?")
    raw = json.loads(config_file.read_text())
    butler = raw.get("model_type") == BUTLER_MODEL_TYPE  # a Llama plus predictor tensors in layer 0's attention
    if butler:
        raw = {**{k: v for k, v in raw.items() if k not in BUTLER_FIELDS}, "model_type": "llama",
               "architectures": ["LlamaForCausalLM"]}
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
