"""Build Hugging Face `LlamaForCausalLM` (PyTorch) models on the same weights as ours (tests only)."""

from __future__ import annotations

import numpy as np
import torch

from butler_jax.config import ModelConfig
from butler_jax.weights.hf import config_to_hf
from butler_jax.weights.tensors import numpy_to_torch


def hf_model_from_state(cfg: ModelConfig, state: dict[str, np.ndarray]):
    """An fp32 HF Llama with exactly `state` (HF names) loaded, in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = config_to_hf(cfg)
    hf_cfg.pop("architectures")
    hf_cfg.pop("model_type")
    hf_cfg.pop("torch_dtype")
    model = LlamaForCausalLM(LlamaConfig(**hf_cfg)).float().eval()
    missing, unexpected = model.load_state_dict({k: numpy_to_torch(np.asarray(v, np.float32)) for k, v in state.items()}, strict=False)
    assert not unexpected, unexpected
    assert all("lm_head" in m for m in missing), missing  # tied head only
    return model


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(tokens)).long()).logits.float().numpy()
