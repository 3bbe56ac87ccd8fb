"""Clear errors for bad inputs, and SmolLM2 wikitext-2 perplexity against transformers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from butler_jax.config import ConfigError, ModelConfig, from_dict
from butler_jax.eval.perplexity import perplexity
from butler_jax.models.llama import LlamaForCausalLM
from butler_jax.weights import CheckpointError, load_model
from butler_jax.weights.hf import config_to_hf
from butler_jax.weights.names import hf_state_dict_to_params
from butler_jax.weights.tensors import write_safetensors
from tests.hf_reference import hf_model_from_state

TINY = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                   num_attention_heads=2, num_key_value_heads=1)


def _tiny_state() -> dict[str, np.ndarray]:
    from butler_jax.models.llama import init_params
    from butler_jax.weights.names import params_to_hf_state_dict

    return params_to_hf_state_dict(init_params(TINY), TINY)


def _write_dir(tmp_path, state, hf_config) -> str:
    (tmp_path / "config.json").write_text(json.dumps(hf_config))
    write_safetensors(state, tmp_path / "model.safetensors")
    return str(tmp_path)


def test_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(str(tmp_path))


def test_unknown_architecture_is_refused(tmp_path) -> None:
    cfg = config_to_hf(TINY) | {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2"}
    with pytest.raises(CheckpointError, match="unsupported model.*Gemma2ForCausalLM.*supports the families llama"):
        load_model(_write_dir(tmp_path, _tiny_state(), cfg))


def test_wrong_shape_and_missing_tensor_are_named(tmp_path) -> None:
    state = _tiny_state()
    state["model.layers.0.mlp.up_proj.weight"] = np.zeros((47, 32), np.float32)
    with pytest.raises(CheckpointError, match=r"model.layers.0.mlp.up_proj.weight.*\(47, 32\).*\(48, 32\)"):
        hf_state_dict_to_params(state, TINY)
    state = _tiny_state()
    del state["model.layers.0.self_attn.k_proj.weight"]
    with pytest.raises(CheckpointError, match="missing tensor 'model.layers.0.self_attn.k_proj.weight'"):
        load_model(_write_dir(tmp_path, state, config_to_hf(TINY)))


def test_local_hf_directory_loads(tmp_path) -> None:
    state = _tiny_state()
    cfg, params = load_model(_write_dir(tmp_path, state, config_to_hf(TINY)))
    assert cfg.num_key_value_heads == 1
    assert np.array_equal(params["layers_0"]["mlp"]["up_proj"]["kernel"], state["model.layers.0.mlp.up_proj.weight"].T)


def test_bad_config_value_is_named() -> None:
    with pytest.raises(ConfigError, match=r"model.dtype='float16' is not allowed; choose one of \['float32', 'bfloat16'\]"):
        from_dict(ModelConfig, {"dtype": "float16"}, "model")
    with pytest.raises(ConfigError, match="unknown key model.hidden; allowed keys"):
        from_dict(ModelConfig, {"hidden": 3}, "model")


def test_smollm2_wikitext_perplexity_matches_transformers(smollm2, smollm2_tokenizer, wikitext_test_text) -> None:
    cfg, params, state = smollm2
    ids = smollm2_tokenizer.encode(wikitext_test_text[:30000])[:2048]
    assert len(ids) == 2048
    ours = perplexity(LlamaForCausalLM(cfg), params, ids, context=1024)
    hf = hf_model_from_state(cfg, state)
    nll = []
    with torch.no_grad():
        for w in range(2):
            x = torch.tensor([ids[w * 1024:(w + 1) * 1024]])
            nll.append(float(hf(x, labels=x).loss) * 1023)
    theirs = math.exp(sum(nll) / (2 * 1023))
    print(f"\nSmolLM2-135M wikitext-2 test, first 2048 tokens (2 x 1024): butler-jax {ours:.4f}, transformers {theirs:.4f}")
    assert abs(ours - theirs) / theirs <= 0.005
