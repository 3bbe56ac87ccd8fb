"""Build Hugging Face transformers (PyTorch) models of every supported family on the same weights as ours (tests only)."""

from __future__ import annotations

import numpy as np
import torch

from butler_jax.config import ModelConfig
from butler_jax.weights.hf import FAMILIES, config_to_hf
from butler_jax.weights.tensors import numpy_to_torch

CONFIG_CLASSES = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config",
                  "qwen3": "Qwen3Config", "phi3": "Phi3Config"}


def hf_config(cfg: ModelConfig, **extra):
    """The transformers config object of `cfg`'s family (from our config.json mapping)."""
    import transformers

    hf_cfg = config_to_hf(cfg)
    for key in ("architectures", "model_type", "torch_dtype"):
        hf_cfg.pop(key)
    return getattr(transformers, CONFIG_CLASSES[cfg.family])(**hf_cfg, **extra)


def hf_model_class(cfg: ModelConfig):
    import transformers

    return getattr(transformers, FAMILIES[cfg.family])


def hf_model_from_state(cfg: ModelConfig, state: dict[str, np.ndarray]):
    """An fp32 HF model of `cfg`'s family with exactly `state` (HF names) loaded, in eval mode."""
    model = hf_model_class(cfg)(hf_config(cfg)).float().eval()
    missing, unexpected = model.load_state_dict({k: numpy_to_torch(np.asarray(v, np.float32)) for k, v in state.items()}, strict=False)
    assert not unexpected, unexpected
    assert all("lm_head" in m for m in missing), missing  # tied head only
    return model


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(tokens)).long()).logits.float().numpy()
