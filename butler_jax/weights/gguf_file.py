"""GGUF (llama.cpp) Llama checkpoints, dequantised with the `gguf` package.

llama.cpp stores the rows of attn_q / attn_k permuted for its interleaved RoPE layout;
`unpermute_rope_rows` restores the Hugging Face rotate-half order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from butler_jax.config import ModelConfig
from butler_jax.errors import CheckpointError
from butler_jax.weights.hf import cast_tree
from butler_jax.weights.names import hf_state_dict_to_params

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj.weight",
    "attn_k": "self_attn.k_proj.weight",
    "attn_v": "self_attn.v_proj.weight",
    "attn_output": "self_attn.o_proj.weight",
    "ffn_gate": "mlp.gate_proj.weight",
    "ffn_up": "mlp.up_proj.weight",
    "ffn_down": "mlp.down_proj.weight",
    "attn_norm": "input_layernorm.weight",
    "ffn_norm": "post_attention_layernorm.weight",
}


def unpermute_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head row interleave of a Q/K projection [n_heads*hd, in]."""
    half = weight.shape[0] // n_heads // 2
    return weight.reshape(n_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise CheckpointError(f"GGUF metadata key {key!r} is missing")
        return default
    return field.contents()


def _config(reader, path: Path, dtype: str) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise CheckpointError(f"GGUF architecture {arch!r} is not supported; butler-jax loads llama only")
    names = {t.name for t in reader.tensors}
    n_heads = int(_field(reader, "llama.attention.head_count"))
    hidden = int(_field(reader, "llama.embedding_length"))
    return ModelConfig(
        vocab_size=len(reader.fields["tokenizer.ggml.tokens"].data),
        hidden_size=hidden,
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_hidden_layers=int(_field(reader, "llama.block_count")),
        num_attention_heads=n_heads,
        num_key_value_heads=int(_field(reader, "llama.attention.head_count_kv", n_heads)),
        head_dim=int(_field(reader, "llama.rope.dimension_count", hidden // n_heads)),
        max_position_embeddings=int(_field(reader, "llama.context_length", 2048)),
        rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(_field(reader, "llama.rope.freq_base", 10000.0)),
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=int(_field(reader, "tokenizer.ggml.bos_token_id", 1)),
        eos_token_id=int(_field(reader, "tokenizer.ggml.eos_token_id", 2)),
        dtype=dtype,
        source=str(path),
    )


def _hf_name(gguf_name: str) -> str:
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    raise CheckpointError(f"unexpected GGUF tensor {gguf_name!r} for a llama model")


def read_gguf_state_dict(path: str | Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(config, HF-named float32 state dict) of a GGUF file; Q/K rows un-permuted."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"GGUF file {str(path)!r} does not exist")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:
        raise CheckpointError(f"could not read {str(path)!r} as GGUF: {exc}") from exc
    cfg = _config(reader, path, "float32")
    state = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name)
        weight = np.asarray(gguf.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        if name.endswith("q_proj.weight"):
            weight = unpermute_rope_rows(weight, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            weight = unpermute_rope_rows(weight, cfg.num_key_value_heads)
        state[name] = weight
    return cfg, state


def load_gguf_llama(path: str | Path, dtype: str = "float32") -> tuple[ModelConfig, dict]:
    """(config, Flax params) from a GGUF file, dequantised to float32 then cast to `dtype`."""
    import dataclasses

    cfg, state = read_gguf_state_dict(path)
    cfg = dataclasses.replace(cfg, dtype=dtype)
    return cfg, cast_tree(hf_state_dict_to_params(state, cfg), dtype)
