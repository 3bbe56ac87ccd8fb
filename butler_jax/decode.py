"""Jitted prefill and a single `lax.while_loop` decode loop with a pluggable selection policy.

Prompts of different lengths are right-padded internally, so every row's token i sits at
position i and cache slot i; left-padded input is converted by `unpad`. Each row stops at its
first stop token; the loop ends when all rows stopped or `max_new_tokens` were produced.

The policy is a static argument (a hashable frozen dataclass: equal policies share one compiled
program); its parameters `policy_params` and its state are traced arguments. The prompt's
attention is `prompt_attention`, a decode step's is the policy's `attend`: one call each.
Every decode step also records, per row and layer, the keys its attention read per selection
head (the policies' own count of what they attended; `GenerationResult.kept_tokens`); the
prompt's pass is dense causal attention for every method and records nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from butler_jax.attention import causal_attention
from butler_jax.cache import KVCache, check_capacity, init_cache, write_block, write_token
from butler_jax.config import ModelConfig
from butler_jax.errors import ConfigError, InputError
from butler_jax.models.llama import LayerInputs, LlamaForCausalLM
from butler_jax.sampling import SamplingConfig, sample
from butler_jax.sparsity.base import Policy, PolicyParams, step_variants
from butler_jax.sparsity.dense import DensePolicy

PAD_MULTIPLE = 64  # prompt lengths are padded to a multiple of this to limit recompilation
PREFILL_CHUNK = 1024  # prompt attention runs over query chunks of this size (memory O(chunk x P))


def unpad(tokens: np.ndarray, attention_mask: np.ndarray) -> list[list[int]]:
    """Rows of a left- or right-padded batch [B, T] with mask [B, T] -> token lists."""
    return [list(map(int, row[mask.astype(bool)])) for row, mask in zip(np.asarray(tokens), np.asarray(attention_mask))]


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int = 0, multiple: int = PAD_MULTIPLE) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token lists to a common length (a multiple of `multiple`) -> tokens [B, P], lengths [B]."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt must hold at least one token")
    longest = max(len(p) for p in prompts)
    width = -(-longest // multiple) * multiple
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    return tokens, np.array([len(p) for p in prompts], np.int32)


def prompt_attention(x: LayerInputs, lengths: jnp.ndarray) -> jnp.ndarray:
    """Dense causal attention of the prompt block x [B, P, ...] (keys < lengths[b]), in query chunks."""
    return jnp.concatenate([
        causal_attention(x.q[:, s:s + PREFILL_CHUNK], x.k, x.v, x.positions[:, s:s + PREFILL_CHUNK], x.positions,
                         k_lengths=lengths, window=x.window)
        for s in range(0, x.q.shape[1], PREFILL_CHUNK)
    ], axis=1)


def prefill(model: LlamaForCausalLM, params, tokens, lengths, cache: KVCache, policy: Policy, state,
            policy_params: PolicyParams = (), shard: Any = None):
    """Run the prompt block, fill the cache and the policy state.

    tokens: [B, P] right-padded, lengths: [B] -> (logits at each row's last prompt token [B, V],
    cache with lengths set, policy state). Inside a sharded decode `shard` (`sharding.local.Shard`)
    says which part of the cache this device holds (the prompt's attention runs whole on each).
    """
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    write = write_block if shard is None else shard.write_block

    def attend(layer: int, x: LayerInputs, carry):
        cache, state = carry
        out = prompt_attention(x, lengths)
        if shard is not None:
            x = shard.local_inputs(x)
        cache = cache.replace_layer(layer, write(cache.k[layer], x.k), write(cache.v[layer], x.v))
        state = policy.observe_prefill(policy_params, layer, x, cache, lengths, state)
        return out, (cache, state)

    h, (cache, state) = model.apply({"params": params}, tokens, positions, attend, (cache, state), method="hidden")
    last = jnp.take_along_axis(h, (lengths - 1)[:, None, None], axis=1)[:, 0]
    logits = model.apply({"params": params}, last, method="logits")
    return logits, cache._replace(lengths=lengths.astype(jnp.int32)), state


def decode_step(model: LlamaForCausalLM, params, token, cache: KVCache, policy: Policy, state,
                policy_params: PolicyParams = (), shard: Any = None):
    """One token per row at position cache.lengths -> (logits [B, V], cache, state, keys read f32
    [B, L]: per layer, the keys its attention read per selection head); `shard` as in `prefill`.

    A policy with several kinds of step (`step_variants`) gets one `lax.switch` around the whole
    step, its layers running with the kind fixed; others run the layers directly."""
    index, variants = step_variants(policy, state)
    if index is None:
        return _layers_step(model, params, token, cache, variants[0], state, policy_params, shard)
    branches = [lambda c, s, v=v: _layers_step(model, params, token, c, v, s, policy_params, shard) for v in variants]
    return jax.lax.switch(index, branches, cache, state)


def _layers_step(model: LlamaForCausalLM, params, token, cache: KVCache, policy: Policy, state,
                 policy_params: PolicyParams = (), shard: Any = None):
    """decode_step's layers with one static policy."""
    positions = cache.lengths[:, None]
    write = write_token if shard is None else shard.write_token

    def attend(layer: int, x: LayerInputs, carry):
        cache, state, kept = carry
        if shard is not None:
            x = shard.local_inputs(x)
        cache = cache.replace_layer(layer, write(cache.k[layer], x.k, cache.lengths),
                                    write(cache.v[layer], x.v, cache.lengths))
        out, state, keys = policy.attend(policy_params, layer, x, cache, state)
        return (out if shard is None else shard.all_heads(out)), (cache, state, kept + (keys,))

    h, (cache, state, kept) = model.apply({"params": params}, token[:, None], positions, attend, (cache, state, ()),
                                          method="hidden")
    logits = model.apply({"params": params}, h[:, 0], method="logits")
    return logits, cache._replace(lengths=cache.lengths + 1), state, jnp.stack(kept, axis=-1)


@dataclass(frozen=True)
class GenerationResult:
    """tokens: [B, max_new] (pad after a row stops); num_generated: [B] tokens kept per row;
    kept_tokens: f32 [B, max_new, L], at [b, j, l] (j >= 1) the keys layer l read per selection
    head in the decode step that produced token j (its query at position prompt length + j - 1,
    seeing prompt length + j keys); 0 at j = 0 (token 0 comes from the dense prompt pass) and
    from j = num_generated[b] on."""

    tokens: np.ndarray
    num_generated: np.ndarray
    kept_tokens: np.ndarray

    def rows(self) -> list[list[int]]:
        return [list(map(int, t[:n])) for t, n in zip(self.tokens, self.num_generated)]


def decode_loop(model: LlamaForCausalLM, params, first, cache: KVCache, state, key, *, policy: Policy,
                max_new_tokens: int, sampling: SamplingConfig, stop_tokens: tuple[int, ...], return_cache: bool = False,
                policy_params: PolicyParams = (), shard: Any = None, return_state: bool = False):
    """Tokens [B, max_new_tokens] (first = the token sampled from prefill), counts [B] and the keys
    read f32 [B, max_new_tokens, L] (`GenerationResult.kept_tokens`), in one while_loop, then the
    final cache when `return_cache` and the final policy state when `return_state` (in that order);
    `shard` as in `prefill`."""
    batch = first.shape[0]
    stops = jnp.asarray(stop_tokens or (-1,), jnp.int32)
    out = jnp.zeros((batch, max_new_tokens), jnp.int32).at[:, 0].set(first)
    kept = jnp.zeros((batch, max_new_tokens, model.cfg.num_hidden_layers), jnp.float32)
    done = jnp.isin(first, stops)
    count = jnp.ones((batch,), jnp.int32)

    def cond(carry):
        step, _, done, *_ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        step, out, kept, done, count, cache, state, key = carry
        logits, cache, state, keys = decode_step(model, params, out[:, step - 1], cache, policy, state, policy_params,
                                                 shard)
        key, sub = jax.random.split(key)
        token = jnp.where(done, 0, sample(logits, sub, sampling))
        out = out.at[:, step].set(token)
        kept = kept.at[:, step].set(jnp.where(done[:, None], 0.0, keys))
        count = count + (~done).astype(jnp.int32)
        done = done | jnp.isin(token, stops)
        return step + 1, out, kept, done, count, cache, state, key

    carry = (jnp.int32(1), out, kept, done, count, cache, state, key)
    _, out, kept, _, count, cache, state, _ = jax.lax.while_loop(cond, body, carry)
    return (out, count, kept) + ((cache,) if return_cache else ()) + ((state,) if return_state else ())


@partial(jax.jit, static_argnames=("model", "policy", "max_new_tokens", "sampling", "stop_tokens", "capacity"))
def _generate(model, params, policy_params, tokens, lengths, key, *, policy, max_new_tokens, sampling, stop_tokens,
              capacity):
    batch = tokens.shape[0]
    cache = init_cache(model.cfg, batch, capacity)
    state = policy.init_state(policy_params, batch, capacity)
    logits, cache, state = prefill(model, params, tokens, lengths, cache, policy, state, policy_params)
    key, sub = jax.random.split(key)
    first = sample(logits, sub, sampling)
    return decode_loop(model, params, first, cache, state, key, policy=policy, max_new_tokens=max_new_tokens,
                       sampling=sampling, stop_tokens=stop_tokens, policy_params=policy_params)


def check_token_ids(prompts: Sequence[Sequence[int]], vocab_size: int) -> None:
    """Raise InputError unless every prompt's token ids lie in [0, vocab_size)."""
    for row, prompt in enumerate(prompts):
        ids = np.asarray(prompt, dtype=np.int64)
        bad = ids[(ids < 0) | (ids >= vocab_size)]
        if bad.size:
            raise InputError(f"prompt {row} holds token id {int(bad[0])} outside the vocabulary [0, {vocab_size})",
                             fix="encode the prompt with this model's tokenizer")


def generate(
    model: LlamaForCausalLM,
    params,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    policy: Policy | None = None,
    policy_params: PolicyParams = (),
    sampling: SamplingConfig = SamplingConfig(),
    stop_tokens: Sequence[int] = (),
    capacity: int | None = None,
    seed: int = 0,
    prompt_width: int | None = None,
    mesh: Any = None,
) -> GenerationResult:
    """Generate up to `max_new_tokens` per prompt (token lists of any lengths) in one jitted loop.

    `policy` (default dense) with its traced parameters `policy_params` (from `make_policy`).
    The cache holds `capacity` tokens per row (default: longest padded prompt + max_new_tokens);
    a prompt that does not fit raises CacheCapacityError. A row's stop token is kept in its output.
    `prompt_width` pads every prompt block to that many tokens (one compiled shape for calls with
    prompts of different lengths); default: the longest prompt rounded up to PAD_MULTIPLE.
    `mesh` (a `sharding.mesh.MeshConfig`): decode on that device mesh (`sharding/decode.py`), the
    cache split along the sequence (and KV heads); None: one device.
    """
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens} must be >= 1")
    check_token_ids(prompts, model.cfg.vocab_size)
    longest = max((len(p) for p in prompts), default=0)
    if prompt_width is not None and prompt_width < longest:
        raise ValueError(f"prompt_width={prompt_width} is shorter than the longest prompt ({longest} tokens)")
    tokens, lengths = pad_prompts(prompts, multiple=prompt_width or PAD_MULTIPLE)
    capacity = capacity or tokens.shape[1] + max_new_tokens
    check_capacity(capacity, int(lengths.max()), max_new_tokens)
    capacity = max(capacity, tokens.shape[1])
    model.cfg.check_context(capacity, "generate (cache capacity: padded prompt + new tokens)", cached=True)
    args = (model, params, policy_params, jnp.asarray(tokens), jnp.asarray(lengths), jax.random.PRNGKey(seed))
    options = dict(policy=policy or DensePolicy(), max_new_tokens=max_new_tokens, sampling=sampling,
                   stop_tokens=tuple(int(t) for t in stop_tokens), capacity=capacity)
    if mesh is None:
        out, count, kept = _generate(*args, **options)
    else:
        from butler_jax.sharding.decode import generate_sharded

        out, count, kept = generate_sharded(*args, mesh=mesh, **options)
    return GenerationResult(np.asarray(out), np.asarray(count), np.asarray(kept))
