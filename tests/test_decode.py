"""Incremental decoding equals the full forward; batching, padding, sampling and generation vs HF."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from butler_jax.cache import CacheCapacityError, init_cache
from butler_jax.config import ModelConfig
from butler_jax.decode import decode_step, generate, pad_prompts, prefill, unpad
from butler_jax.models.llama import LlamaForCausalLM, init_params
from butler_jax.sampling import SamplingConfig
from butler_jax.sparsity.dense import DensePolicy
from tests.hf_reference import hf_model_from_state

TINY = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def test_prefill_then_decode_steps_equal_full_forward() -> None:
    cfg = TINY
    model, params = LlamaForCausalLM(cfg), init_params(cfg, seed=3)
    rng = np.random.default_rng(1)
    lengths = np.array([7, 12], np.int32)
    total = 20
    seqs = rng.integers(0, cfg.vocab_size, (2, total)).astype(np.int32)
    full = []
    for row, n in zip(seqs, lengths):
        logits, _ = model.apply({"params": params}, jnp.asarray(row[None]), jnp.arange(total)[None])
        full.append(np.asarray(logits[0]))
    prompt, _ = pad_prompts([list(seqs[0, :7]), list(seqs[1, :12])], multiple=16)
    policy = DensePolicy()
    cache = init_cache(cfg, 2, 32)
    logits, cache, state = prefill(model, params, jnp.asarray(prompt), jnp.asarray(lengths), cache, policy, ())
    for b in range(2):
        assert np.abs(np.asarray(logits[b]) - full[b][lengths[b] - 1]).max() <= 1e-4
    step = jax.jit(lambda p, t, c: decode_step(model, p, t, c, policy, ()))
    for i in range(6):
        token = seqs[np.arange(2), lengths + i]
        logits, cache, _, _ = step(params, jnp.asarray(token), cache)
        for b in range(2):
            assert np.abs(np.asarray(logits[b]) - full[b][lengths[b] + i]).max() <= 1e-4


def test_batched_generation_equals_single_rows_and_left_padding_is_handled() -> None:
    model, params = LlamaForCausalLM(TINY), init_params(TINY, seed=4)
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15]]
    batched = generate(model, params, prompts, 8).rows()
    singles = [generate(model, params, [p], 8).rows()[0] for p in prompts]
    assert batched == singles
    left = np.array([[0, 0, 0, 0, 5, 6, 7], [9, 10, 11, 12, 13, 14, 15]])
    mask = np.array([[0, 0, 0, 0, 1, 1, 1], [1] * 7])
    assert unpad(left, mask) == prompts


def test_stop_tokens_end_rows() -> None:
    model, params = LlamaForCausalLM(TINY), init_params(TINY, seed=4)
    free = generate(model, params, [[5, 6, 7]], 8).rows()[0]
    stop = free[2]
    stopped = generate(model, params, [[5, 6, 7]], 8, stop_tokens=[stop]).rows()[0]
    assert stopped == free[: free.index(stop) + 1]


def test_sampling_is_seeded_and_top_p_tiny_is_greedy() -> None:
    model, params = LlamaForCausalLM(TINY), init_params(TINY, seed=4)
    hot = SamplingConfig(temperature=1.5)
    a = generate(model, params, [[1, 2, 3]], 10, sampling=hot, seed=1).rows()
    b = generate(model, params, [[1, 2, 3]], 10, sampling=hot, seed=1).rows()
    c = generate(model, params, [[1, 2, 3]], 10, sampling=hot, seed=2).rows()
    assert a == b and a != c
    nucleus = generate(model, params, [[1, 2, 3]], 10, sampling=SamplingConfig(1.0, top_p=1e-6), seed=3).rows()
    assert nucleus == generate(model, params, [[1, 2, 3]], 10).rows()


def test_capacity_error_names_the_numbers() -> None:
    model, params = LlamaForCausalLM(TINY), init_params(TINY)
    with pytest.raises(CacheCapacityError, match=r"100 tokens \+ max_new_tokens=50 needs 150"):
        generate(model, params, [list(range(100))], 50, capacity=120)


def test_greedy_generation_equals_transformers_generate(smollm2, smollm2_tokenizer) -> None:
    from butler_jax.weights.tokenizer import apply_chat_template

    cfg, params, state = smollm2
    prompt = smollm2_tokenizer.encode(apply_chat_template(smollm2_tokenizer, "Write a short poem about the sea."))
    ours = generate(LlamaForCausalLM(cfg), params, [prompt], 32).rows()[0]
    hf = hf_model_from_state(cfg, state)
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, eos_token_id=None,
                          pad_token_id=0, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    assert ours == out[0, len(prompt):].tolist()
