"""Hugging Face state-dict names <-> the Flax parameter tree of `LlamaForCausalLM`, per family.

Generic rules: drop the `model.` prefix, `layers.{i}` <-> `layers_{i}`, a Linear `weight`
[out, in] <-> a Dense `kernel` [in, out] (transposed), a Linear `bias` stays `bias`,
`embed_tokens.weight` <-> `embedding`, norm `weight` stays `weight` (also Qwen3's per-head
`self_attn.q_norm` / `k_norm`). Which tensors exist follows the config (biases, q/k norms, an
untied head). Phi-3 stores `self_attn.qkv_proj` (q, k, v rows stacked) and `mlp.gate_up_proj`
(gate, up rows stacked): `unfuse` splits them into the Llama names on the way in and `fuse`
joins them on the way out, so the model itself has one layout. Arrays are numpy; dtypes kept.
"""

from __future__ import annotations

import re
from typing import Iterator

import numpy as np

from butler_jax.config import ModelConfig
from butler_jax.errors import CheckpointError

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
# fused Phi-3 tensor -> its parts, in row order
FUSED = {
    "self_attn.qkv_proj.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "mlp.gate_up_proj.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
}
FUSED_FAMILIES = ("phi3",)


def hf_param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor an (unfused) HF checkpoint of `cfg` must hold, with its torch shape."""
    hd, d, inter = cfg.resolved_head_dim, cfg.hidden_size, cfg.intermediate_size
    q_out, kv_out = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (cfg.vocab_size, d),
        "model.norm.weight": (d,),
    }
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    per_layer = {
        "self_attn.q_proj.weight": (q_out, d),
        "self_attn.k_proj.weight": (kv_out, d),
        "self_attn.v_proj.weight": (kv_out, d),
        "self_attn.o_proj.weight": (d, q_out),
        "mlp.gate_proj.weight": (inter, d),
        "mlp.up_proj.weight": (inter, d),
        "mlp.down_proj.weight": (d, inter),
        "input_layernorm.weight": (d,),
        "post_attention_layernorm.weight": (d,),
    }
    if cfg.qkv_bias:
        per_layer.update({"self_attn.q_proj.bias": (q_out,), "self_attn.k_proj.bias": (kv_out,),
                          "self_attn.v_proj.bias": (kv_out,)})
    if cfg.o_bias:
        per_layer["self_attn.o_proj.bias"] = (d,)
    if cfg.mlp_bias:
        per_layer.update({"mlp.gate_proj.bias": (inter,), "mlp.up_proj.bias": (inter,), "mlp.down_proj.bias": (d,)})
    if cfg.qk_norm:
        per_layer.update({"self_attn.q_norm.weight": (hd,), "self_attn.k_norm.weight": (hd,)})
    for i in range(cfg.num_hidden_layers):
        for name, shape in per_layer.items():
            shapes[f"model.layers.{i}.{name}"] = shape
    return shapes


def flax_path(hf_name: str) -> tuple[tuple[str, ...], bool]:
    """Flax path of an (unfused) HF tensor name, and whether the tensor is transposed on the way."""
    if hf_name == "model.embed_tokens.weight":
        return ("embed_tokens", "embedding"), False
    if hf_name == "model.norm.weight":
        return ("norm", "weight"), False
    if hf_name == "lm_head.weight":
        return ("lm_head", "kernel"), True
    match = _LAYER.match(hf_name)
    if not match:
        raise CheckpointError(f"tensor {hf_name!r} is not part of a supported decoder checkpoint")
    layer, rest = match.groups()
    parts = rest.split(".")
    if parts[-1] not in ("weight", "bias"):
        raise CheckpointError(f"tensor {hf_name!r} is not part of a supported decoder checkpoint")
    if parts[-2].endswith(("layernorm", "_norm")):
        return (f"layers_{layer}", *parts), False
    if parts[-1] == "bias":
        return (f"layers_{layer}", *parts), False
    return (f"layers_{layer}", *parts[:-1], "kernel"), True


def hf_name(path: tuple[str, ...]) -> str:
    """Inverse of `flax_path`: the HF name of a Flax parameter path."""
    if path[0] in ("embed_tokens", "norm"):
        return f"model.{path[0]}.weight"
    if path[0] == "lm_head":
        return "lm_head.weight"
    layer = path[0].removeprefix("layers_")
    leaf = "weight" if path[-1] == "kernel" else path[-1]
    return f"model.layers.{layer}.{'.'.join(path[1:-1])}.{leaf}"


def _fused_sizes(cfg: ModelConfig, fused_name: str) -> tuple[int, ...]:
    hd = cfg.resolved_head_dim
    if ".self_attn." in fused_name:
        return cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd, cfg.num_key_value_heads * hd
    return cfg.intermediate_size, cfg.intermediate_size


def _fused_names(cfg: ModelConfig) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(fused HF name, its per-projection HF names, in row order) of every layer; none unless `cfg`'s
    family stores fused tensors."""
    if cfg.family not in FUSED_FAMILIES:
        return
    for i in range(cfg.num_hidden_layers):
        for fused, parts in FUSED.items():
            yield f"model.layers.{i}.{fused}", tuple(f"model.layers.{i}.{part}" for part in parts)


def unfuse(state: dict[str, np.ndarray], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Split Phi-3's fused qkv_proj / gate_up_proj rows into the per-projection names."""
    out = dict(state)
    for name, parts in _fused_names(cfg):
        if name not in out:
            raise CheckpointError(f"{cfg.family} checkpoint is missing tensor {name!r}")
        array = np.asarray(out.pop(name))
        sizes = _fused_sizes(cfg, name)
        if array.ndim != 2 or array.shape[0] != sum(sizes) or array.shape[1] != cfg.hidden_size:
            raise CheckpointError(
                f"tensor {name!r} has shape {tuple(array.shape)}, expected ({sum(sizes)}, {cfg.hidden_size})"
            )
        out.update(zip(parts, np.split(array, np.cumsum(sizes)[:-1], axis=0)))
    return out


def fuse(state: dict[str, np.ndarray], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Inverse of `unfuse`: stack the per-projection rows into Phi-3's fused tensors."""
    out = dict(state)
    for name, parts in _fused_names(cfg):
        out[name] = np.ascontiguousarray(np.concatenate([out.pop(part) for part in parts], axis=0))
    return out


def hf_state_dict_to_params(state_dict: dict[str, np.ndarray], cfg: ModelConfig) -> dict:
    """Check names and shapes against `cfg` and build the Flax parameter tree.

    Fused Phi-3 tensors are split first. Extra rotary buffers (`*.rotary_emb.inv_freq`) are
    ignored; a tied checkpoint that still stores `lm_head.weight` is accepted (the head is the
    embedding then, as transformers ties it).
    """
    state_dict = unfuse(state_dict, cfg)
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
        path, transpose = flax_path(name)
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = array.T if transpose else array
    for name in state_dict:
        if name in expected or name.endswith("rotary_emb.inv_freq"):
            continue
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        raise CheckpointError(f"unexpected tensor {name!r} for a {cfg.family} model of this config")
    return params


def params_to_hf_state_dict(params: dict, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Inverse of `hf_state_dict_to_params` (numpy arrays, torch [out, in] layout, fused for Phi-3)."""
    out = {}
    for name in hf_param_shapes(cfg):
        path, transpose = flax_path(name)
        node = params
        for key in path:
            node = node[key]
        array = np.asarray(node)
        out[name] = np.ascontiguousarray(array.T) if transpose else array
    return fuse(out, cfg)
