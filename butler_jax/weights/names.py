"""Hugging Face Llama state-dict names <-> the Flax parameter tree of `LlamaForCausalLM`.

Generic rules: drop the `model.` prefix, `layers.{i}` <-> `layers_{i}`, a Linear `weight`
[out, in] <-> a Dense `kernel` [in, out] (transposed), `embed_tokens.weight` <-> `embedding`,
norm `weight` stays `weight`. Arrays are numpy; dtypes are preserved.
"""

from __future__ import annotations

import re

import numpy as np

from butler_jax.config import ModelConfig
from butler_jax.errors import CheckpointError

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def hf_param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name an HF Llama checkpoint of `cfg` must hold, with its torch shape."""
    hd, d = cfg.resolved_head_dim, cfg.hidden_size
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (cfg.vocab_size, d),
        "model.norm.weight": (d,),
    }
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    per_layer = {
        "self_attn.q_proj.weight": (cfg.num_attention_heads * hd, d),
        "self_attn.k_proj.weight": (cfg.num_key_value_heads * hd, d),
        "self_attn.v_proj.weight": (cfg.num_key_value_heads * hd, d),
        "self_attn.o_proj.weight": (d, cfg.num_attention_heads * hd),
        "mlp.gate_proj.weight": (cfg.intermediate_size, d),
        "mlp.up_proj.weight": (cfg.intermediate_size, d),
        "mlp.down_proj.weight": (d, cfg.intermediate_size),
        "input_layernorm.weight": (d,),
        "post_attention_layernorm.weight": (d,),
    }
    for i in range(cfg.num_hidden_layers):
        for name, shape in per_layer.items():
            shapes[f"model.layers.{i}.{name}"] = shape
    return shapes


def _flax_path(hf_name: str) -> tuple[tuple[str, ...], bool]:
    """Flax path of an HF tensor name, and whether the tensor is transposed on the way."""
    if hf_name == "model.embed_tokens.weight":
        return ("embed_tokens", "embedding"), False
    if hf_name == "model.norm.weight":
        return ("norm", "weight"), False
    if hf_name == "lm_head.weight":
        return ("lm_head", "kernel"), True
    match = _LAYER.match(hf_name)
    if not match:
        raise CheckpointError(f"tensor {hf_name!r} is not part of a Llama checkpoint")
    layer, rest = match.groups()
    parts = rest.split(".")
    if parts[-1] != "weight":
        raise CheckpointError(f"tensor {hf_name!r} is not part of a Llama checkpoint (biases are not supported)")
    if parts[0].endswith("layernorm"):
        return (f"layers_{layer}", parts[0], "weight"), False
    return (f"layers_{layer}", *parts[:-1], "kernel"), True


def hf_state_dict_to_params(state_dict: dict[str, np.ndarray], cfg: ModelConfig) -> dict:
    """Check names and shapes against `cfg` and build the Flax parameter tree.

    Extra rotary buffers (`*.rotary_emb.inv_freq`) are ignored; a tied checkpoint that still
    stores `lm_head.weight` is accepted when it equals the embedding.
    """
    expected = hf_param_shapes(cfg)
    params: dict = {}
    for name, shape in expected.items():
        if name not in state_dict:
            raise CheckpointError(f"checkpoint is missing tensor {name!r} (expected shape {shape})")
        array = np.asarray(state_dict[name])
        if tuple(array.shape) != shape:
            raise CheckpointError(
                f"tensor {name!r} has shape {tuple(array.shape)}, expected {shape} for this config"
            )
        path, transpose = _flax_path(name)
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = array.T if transpose else array
    for name in state_dict:
        if name in expected or name.endswith("rotary_emb.inv_freq"):
            continue
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        raise CheckpointError(f"unexpected tensor {name!r} for a Llama model of this config")
    return params


def params_to_hf_state_dict(params: dict, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Inverse of `hf_state_dict_to_params` (numpy arrays, torch [out, in] layout)."""
    out = {}
    for name in hf_param_shapes(cfg):
        path, transpose = _flax_path(name)
        node = params
        for key in path:
            node = node[key]
        array = np.asarray(node)
        out[name] = np.ascontiguousarray(array.T) if transpose else array
    return out
