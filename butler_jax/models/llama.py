"""Flax (linen) Llama-family decoder with an attention hook: Llama, Mistral, Qwen2/2.5, Qwen3, Phi-3.

One model, per-family options from `ModelConfig`: projection biases (Qwen2's Q/K/V, Llama's
`attention_bias` / `mlp_bias`), Qwen3's per-head q/k RMSNorm, a sliding window (Mistral, Phi-3,
Qwen with `use_sliding_window`), partial rotary dims and longrope (Phi-3), the MLP activation.
Phi-3's fused `qkv_proj` / `gate_up_proj` are split at load time (weights/names.py), so every
family runs the same unfused projections.

Parameter names follow Hugging Face (`embed_tokens`, `layers_{i}.self_attn.q_proj`, `mlp.gate_proj`,
`input_layernorm`, `norm`, `lm_head`) so conversion is a few generic rules (weights/names.py).

Attention is pluggable: every layer computes q, k, v (RoPE applied) and hands them to an
`AttendFn`, which returns the attention output and any auxiliary value (a new cache slice,
teacher logits, selection statistics). The default hook is dense causal attention. The decode
loop, the sparsity policies and the training loss all plug in here, so there is exactly one
implementation of the projections, RoPE and attention math.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from butler_jax.attention import causal_attention
from butler_jax.config import ModelConfig
from butler_jax.models.rope import apply_rope, rope_cos_sin, rope_tables


class LayerInputs(NamedTuple):
    """What a layer's attention hook sees. Shapes: B batch, T tokens, D model width."""

    q: jnp.ndarray  # [B, T, Hq, hd], RoPE applied
    k: jnp.ndarray  # [B, T, Hkv, hd], RoPE applied
    v: jnp.ndarray  # [B, T, Hkv, hd]
    positions: jnp.ndarray  # [B, T] int32
    normed: jnp.ndarray  # [B, T, D] input of the attention (after input_layernorm)
    residual: jnp.ndarray  # [B, T, D] residual stream entering the layer (before the norm)
    window: int | None = None  # this layer's sliding window (None: full causal attention)


# attend(layer_index, inputs, carry) -> (attention output [B, T, Hq, hd], new carry).
# The carry is any pytree threaded through the layers in order (a KV cache, a policy state,
# accumulated losses); it is how a hook passes values from one layer to the next.
AttendFn = Callable[[int, LayerInputs, Any], tuple[jnp.ndarray, Any]]


def dense_causal_attend(layer: int, x: LayerInputs, carry: Any) -> tuple[jnp.ndarray, Any]:
    """Default hook: causal attention over the tokens of this call only (no cache)."""
    del layer
    return causal_attention(x.q, x.k, x.v, x.positions, x.positions, window=x.window), carry


def _dtype(cfg: ModelConfig) -> jnp.dtype:
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


class RMSNorm(nn.Module):
    """RMSNorm as HF Llama: normalise in float32, cast back, then scale by `weight`."""

    eps: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        weight = self.param("weight", nn.initializers.ones, (x.shape[-1],), self.dtype)
        xf = x.astype(jnp.float32)
        xf = xf * jnp.reciprocal(jnp.sqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps))
        return weight * xf.astype(self.dtype)


def _dense(features: int, name: str, dtype: Any, bias: bool = False) -> nn.Dense:
    return nn.Dense(
        features, use_bias=bias, dtype=dtype, param_dtype=dtype, name=name,
        kernel_init=nn.initializers.normal(0.02),
    )


ACTIVATIONS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
    "silu": nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


class LlamaMLP(nn.Module):
    """Gated MLP: down(act(gate(x)) * up(x)) (SwiGLU with silu)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        cfg, dt = self.cfg, _dtype(self.cfg)
        gate = _dense(cfg.intermediate_size, "gate_proj", dt, cfg.mlp_bias)(x)
        up = _dense(cfg.intermediate_size, "up_proj", dt, cfg.mlp_bias)(x)
        return _dense(cfg.hidden_size, "down_proj", dt, cfg.mlp_bias)(ACTIVATIONS[cfg.hidden_act](gate) * up)


class LlamaAttention(nn.Module):
    """Grouped-query attention projections; the attention itself is the hook's job."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, layer: int, normed, residual, cos, sin, positions, attend: AttendFn, carry):
        cfg, dt = self.cfg, _dtype(self.cfg)
        b, t, _ = normed.shape
        hd = cfg.resolved_head_dim
        q = _dense(cfg.num_attention_heads * hd, "q_proj", dt, cfg.qkv_bias)(normed)
        k = _dense(cfg.num_key_value_heads * hd, "k_proj", dt, cfg.qkv_bias)(normed)
        v = _dense(cfg.num_key_value_heads * hd, "v_proj", dt, cfg.qkv_bias)(normed)
        q = q.reshape(b, t, cfg.num_attention_heads, hd)
        k = k.reshape(b, t, cfg.num_key_value_heads, hd)
        if cfg.qk_norm:  # Qwen3: RMSNorm over each head's dims, before RoPE
            q = RMSNorm(cfg.rms_norm_eps, dt, name="q_norm")(q)
            k = RMSNorm(cfg.rms_norm_eps, dt, name="k_norm")(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        v = v.reshape(b, t, cfg.num_key_value_heads, hd)
        inputs = LayerInputs(q, k, v, positions, normed, residual, cfg.layer_window(layer))
        out, carry = attend(layer, inputs, carry)
        out = out.astype(dt).reshape(b, t, cfg.num_attention_heads * hd)
        return _dense(cfg.hidden_size, "o_proj", dt, cfg.o_bias)(out), carry


class LlamaDecoderLayer(nn.Module):
    """Pre-norm decoder layer: h + attn(norm(h)), then + mlp(norm(h))."""

    cfg: ModelConfig
    layer_index: int

    @nn.compact
    def __call__(self, h, cos, sin, positions, attend: AttendFn, carry):
        dt = _dtype(self.cfg)
        normed = RMSNorm(self.cfg.rms_norm_eps, dt, name="input_layernorm")(h)
        attn, carry = LlamaAttention(self.cfg, name="self_attn")(
            self.layer_index, normed, h, cos, sin, positions, attend, carry
        )
        h = h + attn
        normed = RMSNorm(self.cfg.rms_norm_eps, dt, name="post_attention_layernorm")(h)
        return h + LlamaMLP(self.cfg, name="mlp")(normed), carry


class LlamaForCausalLM(nn.Module):
    """Decoder of any supported family + LM head (tied to `embed_tokens` when cfg.tie_word_embeddings).

    `__call__(tokens [B, T], positions [B, T], attend, carry)` -> (logits [B, T, V] f32, the
    carry after the last layer). `hidden(...)` returns the final normed hidden state instead.
    """

    cfg: ModelConfig

    def setup(self) -> None:
        cfg, dt = self.cfg, _dtype(self.cfg)
        self.embed_tokens = nn.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=dt, param_dtype=dt,
            embedding_init=nn.initializers.normal(0.02),
        )
        self.layers = [LlamaDecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)]
        self.norm = RMSNorm(cfg.rms_norm_eps, dt)
        if not cfg.tie_word_embeddings:
            self.lm_head = _dense(cfg.vocab_size, "lm_head", dt)
        self.rope = rope_tables(cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling)

    def hidden(self, tokens, positions, attend: AttendFn = dense_causal_attend, carry: Any = None):
        """Final normed hidden states [B, T, D] and the carry after the last layer."""
        h = self.embed_tokens(tokens)
        cos, sin = rope_cos_sin(positions, self.rope)
        for layer in self.layers:
            h, carry = layer(h, cos, sin, positions, attend, carry)
        return self.norm(h), carry

    def logits(self, h: jnp.ndarray) -> jnp.ndarray:
        """LM head on hidden states [..., D] -> float32 logits [..., V]."""
        if self.cfg.tie_word_embeddings:
            out = self.embed_tokens.attend(h)
        else:
            out = self.lm_head(h)
        return out.astype(jnp.float32)

    def __call__(self, tokens, positions, attend: AttendFn = dense_causal_attend, carry: Any = None):
        h, carry = self.hidden(tokens, positions, attend, carry)
        return self.logits(h), carry


def init_params(cfg: ModelConfig, seed: int | None = None) -> dict:
    """Random parameters for `cfg` (normal(0.02) projections, zero biases, unit norms)."""
    model = LlamaForCausalLM(cfg)
    tokens = jnp.zeros((1, 1), jnp.int32)
    return model.init(jax.random.PRNGKey(cfg.seed if seed is None else seed), tokens, tokens)["params"]
