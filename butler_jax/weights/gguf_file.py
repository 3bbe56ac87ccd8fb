"""GGUF (llama.cpp) checkpoints of the families llama.cpp writes under their own architecture names:
`llama` (Llama, and Mistral, which llama.cpp converts as llama), `qwen2`, `qwen3` and `phi3`;
dequantised with the `gguf` package.

llama.cpp stores the rows of attn_q / attn_k permuted for its interleaved RoPE layout on `llama`
only (the others use the NEOX, i.e. rotate-half, layout); `unpermute_rope_rows` restores the
Hugging Face order. Phi-3's fused attn_qkv / ffn_up (gate rows then up rows) are the HF fused
tensors and are split like an HF Phi-3 checkpoint; its longrope factors are the
`rope_factors_short` / `rope_factors_long` tensors. Metadata keys that change the math and are
not implemented (e.g. `llama.rope.scaling.type` linear or yarn) are refused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from butler_jax.config import ModelConfig, RopeScaling
from butler_jax.errors import CheckpointError
from butler_jax.weights.hf import cast_tree
from butler_jax.weights.names import hf_state_dict_to_params

ARCH_FAMILY = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3"}  # GGUF arch -> family
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_qkv": "self_attn.qkv_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_ROPE_FACTORS = ("rope_factors_short.weight", "rope_factors_long.weight")
# metadata read below, per arch prefix; other `{arch}.*` keys are refused
_READ = {"context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count",
         "attention.head_count_kv", "attention.key_length", "attention.value_length",
         "attention.layer_norm_rms_epsilon", "rope.dimension_count", "rope.freq_base", "attention.sliding_window",
         "rope.scaling.original_context_length", "rope.scaling.attn_factor", "vocab_size"}


def unpermute_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head row interleave of a Q/K projection [n_heads*hd, in] (or bias [n_heads*hd])."""
    half = weight.shape[0] // n_heads // 2
    return weight.reshape(n_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise CheckpointError(f"GGUF metadata key {key!r} is missing")
        return default
    return field.contents()


def _check_metadata(reader, arch: str) -> None:
    for key in reader.fields:
        if key.startswith(f"{arch}.") and key[len(arch) + 1:] not in _READ:
            value = reader.fields[key].contents()
            raise CheckpointError(f"GGUF metadata {key}={value!r} is not implemented by butler-jax and may change "
                                  "the computation; the file is refused rather than run without it")


def _config(reader, path: Path, dtype: str, tensors: dict[str, np.ndarray]) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch not in ARCH_FAMILY:
        raise CheckpointError(f"GGUF architecture {arch!r} is not supported; butler-jax loads "
                              f"{', '.join(ARCH_FAMILY)}")
    _check_metadata(reader, arch)
    f = lambda key, default=None: _field(reader, f"{arch}.{key}", default)  # noqa: E731
    n_heads, hidden = int(f("attention.head_count")), int(f("embedding_length"))
    head_dim = int(f("attention.key_length", f("rope.dimension_count", hidden // n_heads) if arch == "llama"
                     else hidden // n_heads))
    rotary = int(f("rope.dimension_count", head_dim))
    family = ARCH_FAMILY[arch]
    scaling = RopeScaling()
    if all(name in tensors for name in _ROPE_FACTORS):
        short, long = (tuple(float(x) for x in tensors.pop(name).reshape(-1)) for name in _ROPE_FACTORS)
        original = int(f("rope.scaling.original_context_length"))
        scaling = RopeScaling("longrope", factor=int(f("context_length", original)) / original, short_factor=short,
                              long_factor=long, original_max_position_embeddings=original,
                              attention_factor=float(f("rope.scaling.attn_factor")) if
                              f"{arch}.rope.scaling.attn_factor" in reader.fields else None)
    window = f("attention.sliding_window", 0)
    return ModelConfig(
        vocab_size=len(reader.fields["tokenizer.ggml.tokens"].data),
        hidden_size=hidden,
        intermediate_size=int(f("feed_forward_length")),
        num_hidden_layers=int(f("block_count")),
        num_attention_heads=n_heads,
        num_key_value_heads=int(f("attention.head_count_kv", n_heads)),
        head_dim=head_dim,
        max_position_embeddings=int(f("context_length", 2048)),
        rms_norm_eps=float(f("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(f("rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        partial_rotary_factor=rotary / head_dim,
        tie_word_embeddings="output.weight" not in tensors,
        family=family,
        qkv_bias="blk.0.attn_q.bias" in tensors,
        o_bias="blk.0.attn_output.bias" in tensors,
        mlp_bias="blk.0.ffn_down.bias" in tensors,
        qk_norm="blk.0.attn_q_norm.weight" in tensors,
        sliding_window=int(window) or None,
        bos_token_id=int(_field(reader, "tokenizer.ggml.bos_token_id", 1)),
        eos_token_id=int(_field(reader, "tokenizer.ggml.eos_token_id", 2)),
        dtype=dtype,
        source=str(path),
    )


def _hf_name(gguf_name: str, family: str) -> str:
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[3] in ("weight", "bias"):
        if parts[2] == "ffn_up":
            base = "mlp.gate_up_proj" if family == "phi3" else "mlp.up_proj"
            return f"model.layers.{parts[1]}.{base}.{parts[3]}"
        if parts[2] in _LAYER_NAMES:
            return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    raise CheckpointError(f"unexpected GGUF tensor {gguf_name!r} for a {family} model")


def open_gguf(path: str | Path):
    """A `gguf.GGUFReader` of `path` (metadata and memory-mapped tensors); CheckpointError if unreadable."""
    import gguf

    if not Path(path).is_file():
        raise CheckpointError(f"GGUF file {str(path)!r} does not exist")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as exc:
        raise CheckpointError(f"could not read {str(path)!r} as GGUF: {exc}") from exc


def read_gguf_state_dict(path: str | Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(config, HF-named float32 state dict) of a GGUF file; llama's Q/K rows un-permuted."""
    import gguf

    reader = open_gguf(path)
    path = Path(path)
    tensors = {t.name: np.asarray(gguf.dequantize(t.data, t.tensor_type), dtype=np.float32) for t in reader.tensors}
    cfg = _config(reader, path, "float32", tensors)
    permuted = _field(reader, "general.architecture") == "llama"
    state = {}
    for gguf_name, weight in tensors.items():
        name = _hf_name(gguf_name, cfg.family)
        if permuted and ".q_proj." in name:
            weight = unpermute_rope_rows(weight, cfg.num_attention_heads)
        elif permuted and ".k_proj." in name:
            weight = unpermute_rope_rows(weight, cfg.num_key_value_heads)
        state[name] = weight
    return cfg, state


def load_gguf_model(path: str | Path, dtype: str = "float32") -> tuple[ModelConfig, dict]:
    """(config, Flax params) from a GGUF file, dequantised to float32 then cast to `dtype`."""
    cfg, state = read_gguf_state_dict(path)
    cfg = dataclasses.replace(cfg, dtype=dtype)
    return cfg, cast_tree(hf_state_dict_to_params(state, cfg), dtype)
