"""Llama backbone conversion through `convert_torch.py`: HF -> JAX -> HF and JAX -> HF -> JAX bit-exact
(fp32, bf16), and a JAX -> HF export of SmolLM2 that `transformers` loads and greedy-decodes like us."""

from __future__ import annotations

import dataclasses
import json

import ml_dtypes
import numpy as np
import pytest
import torch

import convert_torch
from butler_jax.config import ModelConfig
from butler_jax.models.llama import init_params
from butler_jax.weights.flax_checkpoint import flatten, unflatten
from butler_jax.weights.hf import config_to_hf
from butler_jax.weights.model_checkpoint import load_jax_model, save_jax_model
from butler_jax.weights.names import params_to_hf_state_dict
from butler_jax.weights.tensors import read_safetensors, write_safetensors

TINY = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, tie_word_embeddings=False)
NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8)


def _random_params(dtype: str) -> dict:
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(np.shape(v)).astype(NP_DTYPES[dtype]) for k, v in flatten(init_params(TINY)).items()}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_hf_to_jax_to_hf_bit_exact(tmp_path, dtype):
    state = params_to_hf_state_dict(unflatten(_random_params(dtype)), TINY)
    src = tmp_path / "hf"
    src.mkdir()
    write_safetensors(state, src / "model.safetensors")
    (src / "config.json").write_text(json.dumps(config_to_hf(TINY, dtype)))
    assert convert_torch.main(["llama-to-jax", str(src), str(tmp_path / "jax")]) == 0
    cfg, params = load_jax_model(tmp_path / "jax")
    assert cfg.dtype == dtype and {str(v.dtype) for v in flatten(params).values()} == {dtype}
    assert convert_torch.main(["jax-to-hf", str(tmp_path / "jax"), str(tmp_path / "back")]) == 0
    back = read_safetensors(tmp_path / "back" / "model.safetensors")
    assert sorted(back) == sorted(state)
    for name, value in state.items():
        assert back[name].dtype == value.dtype and np.array_equal(_bits(back[name]), _bits(value)), name


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_jax_to_hf_to_jax_bit_exact(tmp_path, dtype):
    flat = _random_params(dtype)
    save_jax_model(unflatten(flat), dataclasses.replace(TINY, dtype=dtype), tmp_path / "jax")
    assert convert_torch.main(["jax-to-hf", str(tmp_path / "jax"), str(tmp_path / "hf")]) == 0
    assert convert_torch.main(["llama-to-jax", str(tmp_path / "hf"), str(tmp_path / "again")]) == 0
    _, params = load_jax_model(tmp_path / "again")
    back = flatten(params)
    assert sorted(back) == sorted(flat)
    for name, value in flat.items():
        assert back[name].dtype == value.dtype and np.array_equal(_bits(back[name]), _bits(value)), name


def test_smollm2_hf_export_generates_the_same_32_tokens(tmp_path, smollm2, smollm2_tokenizer):
    """The exported directory loads in transformers; greedy 32 tokens equal our JAX decode loop's."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    from butler_jax.decode import generate
    from butler_jax.models.llama import LlamaForCausalLM

    cfg, params, _ = smollm2
    save_jax_model(params, cfg, tmp_path / "smollm2-jax")
    out = tmp_path / "smollm2-hf"
    assert convert_torch.main(["jax-to-hf", str(tmp_path / "smollm2-jax"), str(out), "--tokenizer", "embedded"]) == 0
    prompt = smollm2_tokenizer("The capital of France is a city where")["input_ids"]
    ours = generate(LlamaForCausalLM(cfg), params, [prompt], 32).rows()[0]
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    greedy = GenerationConfig(max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        theirs = model.generate(torch.tensor([prompt]), generation_config=greedy)[0, len(prompt):].tolist()
    assert len(ours) == 32 and ours == theirs
