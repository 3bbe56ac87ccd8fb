"""Perplexity: token-weighted mean next-token cross-entropy over fixed windows, exponentiated.

`window_nll` takes any attention hook, so the same code measures dense attention and the
decode-simulated sparse policies (each query row selects among its own causal past).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from butler_jax.models.llama import AttendFn, LlamaForCausalLM, dense_causal_attend


@partial(jax.jit, static_argnames=("model", "attend"))
def window_nll(model: LlamaForCausalLM, params, tokens: jnp.ndarray, attend: AttendFn = dense_causal_attend):
    """Summed NLL and count of next-token predictions for windows tokens [B, T] -> (f32, int)."""
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    logits, _ = model.apply({"params": params}, tokens, positions, attend)
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return nll.sum(), nll.size


def perplexity(model: LlamaForCausalLM, params, token_ids: Sequence[int], context: int, max_windows: int | None = None,
               attend: AttendFn = dense_causal_attend, progress: bool = False) -> float:
    """Perplexity over non-overlapping windows of `context` tokens (the last partial window dropped)."""
    ids = np.asarray(token_ids, np.int32)
    n = len(ids) // context if max_windows is None else min(max_windows, len(ids) // context)
    if n == 0:
        raise ValueError(f"need at least context={context} tokens, got {len(ids)}")
    total, count = 0.0, 0
    for w in tqdm(range(n), desc="perplexity", disable=not progress):
        s, c = window_nll(model, params, jnp.asarray(ids[w * context:(w + 1) * context][None]), attend)
        total, count = total + float(s), count + int(c)
    return math.exp(total / count)
