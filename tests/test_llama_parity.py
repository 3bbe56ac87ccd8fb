"""Logit parity of the Flax Llama with Hugging Face transformers (PyTorch) on the same weights."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from butler_jax.config import ModelConfig, RopeScaling
from butler_jax.models.llama import LlamaForCausalLM
from butler_jax.weights.names import hf_state_dict_to_params
from butler_jax.weights.tensors import torch_to_numpy
from tests.hf_reference import hf_logits, hf_model_from_state

TINY = ModelConfig(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
)
CASES = {
    "gqa-default-tied": TINY,
    "mha-untied": dataclasses.replace(TINY, num_key_value_heads=4, tie_word_embeddings=False),
    "gqa-linear": dataclasses.replace(TINY, rope_scaling=RopeScaling("linear", factor=4.0)),
    "gqa-llama3": dataclasses.replace(
        TINY, rope_theta=500000.0, max_position_embeddings=1024,
        rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 64),
    ),
    "mqa-headdim": dataclasses.replace(TINY, num_key_value_heads=1, head_dim=32),
}


def _random_hf_state(cfg: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    from transformers import LlamaConfig, LlamaForCausalLM as HFLlama

    from butler_jax.weights.hf import config_to_hf

    torch.manual_seed(seed)
    hf_cfg = {k: v for k, v in config_to_hf(cfg).items() if k not in ("architectures", "model_type", "torch_dtype")}
    model = HFLlama(LlamaConfig(**hf_cfg, initializer_range=0.1))
    state = {k: torch_to_numpy(v) for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    # random norm weights too, so the tests see them
    for name in state:
        if name.endswith("norm.weight"):
            state[name] = np.random.default_rng(seed).uniform(0.5, 1.5, state[name].shape).astype(np.float32)
    return state


@pytest.mark.parametrize("name", list(CASES))
def test_tiny_configs_match_transformers(name: str) -> None:
    cfg = CASES[name]
    state = _random_hf_state(cfg, seed=len(name))
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 64))
    expected = hf_logits(hf_model_from_state(cfg, state), tokens)
    params = hf_state_dict_to_params(state, cfg)
    positions = jnp.broadcast_to(jnp.arange(64), (2, 64))
    ours, _ = LlamaForCausalLM(cfg).apply({"params": params}, jnp.asarray(tokens), positions)
    assert np.abs(np.asarray(ours) - expected).max() <= 1e-4


def test_smollm2_matches_transformers_on_wikitext(smollm2, smollm2_tokenizer, wikitext_test_text) -> None:
    cfg, params, state = smollm2
    tokens = np.array([smollm2_tokenizer.encode(wikitext_test_text[:4000])[:256]])
    expected = hf_logits(hf_model_from_state(cfg, state), tokens)
    ours, _ = jax.jit(LlamaForCausalLM(cfg).apply)({"params": params}, jnp.asarray(tokens), jnp.arange(256)[None])
    ours = np.asarray(ours)
    assert np.abs(ours - expected).max() <= 1e-3
    assert (ours.argmax(-1) == expected.argmax(-1)).all()
