"""The paper's TokenButler predictor (`TokenImportancePredictorAttentive`, variants v1 and v2).

Reads the hidden state entering layer 0's attention (after its input RMSNorm), x [B, L, D], and
returns importance queries and keys for every (layer, query head): Q, K [B, L, N, H, d'], RoPE'd
on d'. The predicted logit of layer l, head a, for query i and key j is Q[i,l,a].K[j,l,a]/sqrt(d').

Sizes (spec: D model width, H query heads, N = number of layers, R = D / attn_reduce_factor,
h_a = R / H): input_proj D->R; a one-layer causal attention with H heads of dim h_a and its own
RoPE (forced Llama-3 scaling, factor 32 over 8192, whatever the model's rope: a quirk kept for
checkpoint parity); norm1 + FFN R->2R->D (exact GELU, dropout 0.1 in training); residual;
v2 adds norm2 and norm_importance; q/k importance MLPs D->I->N*H*d' (SiLU).

Decode: `prefill` fills a `PredictorCache` (mini-attention K/V and importance keys) and `step`
extends it one token per row, rotating each token once at its own position, so prefill +
steps equals the full-sequence pass.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from butler_jax.attention import attention_logits, causal_attention, masked_attention
from butler_jax.config import ConfigError, ModelConfig, PredictorConfig, RopeScaling
from butler_jax.models.rope import apply_rope, rope_cos_sin, rope_inv_freq

PREDICTOR_ROPE = RopeScaling("llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=8192)


class PredictorCache(NamedTuple):
    """k, v: [B, H, T, h_a] mini-attention keys (RoPE'd) / values; imp_k: [B, N, H, T, d'] importance keys (RoPE'd)."""

    k: jnp.ndarray
    v: jnp.ndarray
    imp_k: jnp.ndarray


def paper_dims(pcfg: PredictorConfig, mcfg: ModelConfig) -> tuple[int, int, int]:
    """(R, h_a, N) with the spec's divisibility checks."""
    d, h = mcfg.hidden_size, mcfg.num_attention_heads
    if d % pcfg.attn_reduce_factor:
        raise ConfigError(f"hidden_size={d} is not divisible by predictor.attn_reduce_factor={pcfg.attn_reduce_factor}")
    r = d // pcfg.attn_reduce_factor
    if r % h:
        raise ConfigError(f"predictor width R={r} (hidden/attn_reduce_factor) is not divisible by {h} heads; "
                          "choose another predictor.attn_reduce_factor")
    return r, r // h, mcfg.num_hidden_layers


def paper_param_count(pcfg: PredictorConfig, mcfg: ModelConfig) -> int:
    """The spec's formula: D*R + 3R^2 + 2R + 2D + (2R*R + 2R) + (2R*D + D) + 2(D*I + I*N*H*d') (+2D for v2)."""
    d, (r, _, n) = mcfg.hidden_size, paper_dims(pcfg, mcfg)
    i, hd = pcfg.intdim, n * mcfg.num_attention_heads * pcfg.dDash
    count = d * r + 3 * r * r + 2 * r + 2 * d + (2 * r * r + 2 * r) + (2 * r * d + d) + 2 * (d * i + i * hd)
    return count + (2 * d if pcfg.variant == "v2" else 0)


def _linear(features: int, name: str, bias: bool = False) -> nn.Dense:
    return nn.Dense(features, use_bias=bias, name=name, kernel_init=nn.initializers.xavier_uniform())


class PaperPredictor(nn.Module):
    """The paper predictor; parameters are float32 (the frozen model may be bf16)."""

    pcfg: PredictorConfig
    mcfg: ModelConfig

    def setup(self) -> None:
        d, (r, h_a, n) = self.mcfg.hidden_size, paper_dims(self.pcfg, self.mcfg)
        self.dims = (r, h_a, n)
        self.input_proj = _linear(r, "input_proj")
        self.q_proj_attn = _linear(r, "q_proj_attn")
        self.k_proj_attn = _linear(r, "k_proj_attn")
        self.v_proj_attn = _linear(r, "v_proj_attn")
        self.norm1 = nn.LayerNorm(epsilon=1e-5, name="norm1")
        self.ffn_0 = _linear(2 * r, "ffn_0", bias=True)
        self.ffn_2 = _linear(d, "ffn_2", bias=True)
        self.dropout = nn.Dropout(self.pcfg.dropout)
        self.norm2 = nn.LayerNorm(epsilon=1e-5, name="norm2")  # v1: created, never applied (quirk)
        if self.pcfg.variant == "v2":
            self.norm_importance = nn.LayerNorm(epsilon=1e-5, name="norm_importance")
        out = n * self.mcfg.num_attention_heads * self.pcfg.dDash
        self.q_importance_0 = _linear(self.pcfg.intdim, "q_proj_importance_0")
        self.q_importance_2 = _linear(out, "q_proj_importance_2")
        self.k_importance_0 = _linear(self.pcfg.intdim, "k_proj_importance_0")
        self.k_importance_2 = _linear(out, "k_proj_importance_2")
        self.attn_inv_freq = rope_inv_freq(h_a, self.mcfg.rope_theta, PREDICTOR_ROPE)
        self.imp_inv_freq = rope_inv_freq(self.pcfg.dDash, self.mcfg.rope_theta, PREDICTOR_ROPE)

    def _mini_qkv(self, x: jnp.ndarray, positions: jnp.ndarray):
        """Mini-attention q, k (RoPE'd), v: [B, L, H, h_a] each."""
        b, length, _ = x.shape
        h, (_, h_a, _) = self.mcfg.num_attention_heads, self.dims
        u = self.input_proj(x)
        q, k, v = (p(u).reshape(b, length, h, h_a) for p in (self.q_proj_attn, self.k_proj_attn, self.v_proj_attn))
        cos, sin = rope_cos_sin(positions, self.attn_inv_freq)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _importance(self, x, a, positions, deterministic: bool):
        """Importance Q, K [B, L, N, H, d'] (RoPE'd) from x [B, L, D] and attention output a [B, L, R]."""
        b, length, _ = x.shape
        f = self.ffn_2(nn.gelu(self.ffn_0(self.norm1(a)), approximate=False))
        z = x + self.dropout(f, deterministic=deterministic)
        if self.pcfg.variant == "v2":
            z = self.norm_importance(self.norm2(z))
        elif self.is_initializing():
            self.norm2(z)  # v1 checkpoints carry norm2's (unused) parameters
        n, h, dd = self.dims[2], self.mcfg.num_attention_heads, self.pcfg.dDash
        qi = self.q_importance_2(nn.silu(self.q_importance_0(z))).reshape(b, length, n * h, dd)
        ki = self.k_importance_2(nn.silu(self.k_importance_0(z))).reshape(b, length, n * h, dd)
        cos, sin = rope_cos_sin(positions, self.imp_inv_freq)
        qi, ki = apply_rope(qi, cos, sin), apply_rope(ki, cos, sin)
        return qi.reshape(b, length, n, h, dd), ki.reshape(b, length, n, h, dd)

    def __call__(self, x: jnp.ndarray, positions: jnp.ndarray, deterministic: bool = True):
        """Full sequence: x [B, L, D], positions [B, L] -> (Q, K) [B, L, N, H, d']."""
        x = x.astype(jnp.float32)
        q, k, v = self._mini_qkv(x, positions)
        a = causal_attention(q, k, v, positions, positions)
        return self._importance(x, a.reshape(*x.shape[:2], -1), positions, deterministic)

    def init_cache(self, batch: int, capacity: int) -> PredictorCache:
        _, h_a, n = paper_dims(self.pcfg, self.mcfg)
        h = self.mcfg.num_attention_heads
        return PredictorCache(jnp.zeros((batch, h, capacity, h_a)), jnp.zeros((batch, h, capacity, h_a)),
                              jnp.zeros((batch, n, h, capacity, self.pcfg.dDash)))

    def prefill_blocks(self, x: jnp.ndarray, positions: jnp.ndarray, lengths: jnp.ndarray):
        """Prompt block x [B, P, D] (right padded to lengths [B]) -> (Q [B, P, N, H, d'], the cache's
        blocks in its layout: mini-attention k, v [B, H, P, h_a], importance keys [B, N, H, P, d'])."""
        x = x.astype(jnp.float32)
        q, k, v = self._mini_qkv(x, positions)
        a = causal_attention(q, k, v, positions, positions, k_lengths=lengths)
        qi, ki = self._importance(x, a.reshape(*x.shape[:2], -1), positions, True)
        return qi, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), jnp.transpose(ki, (0, 2, 3, 1, 4))

    def prefill(self, x: jnp.ndarray, positions: jnp.ndarray, lengths: jnp.ndarray, cache: PredictorCache):
        """Prompt block x [B, P, D] (right padded to lengths [B]) -> (Q [B, P, N, H, d'], filled cache)."""
        qi, k, v, ki = self.prefill_blocks(x, positions, lengths)
        put = lambda buf, blk: jax.lax.dynamic_update_slice(buf, blk.astype(buf.dtype), (0,) * buf.ndim)  # noqa: E731
        return qi, PredictorCache(put(cache.k, k), put(cache.v, v), put(cache.imp_k, ki))

    def step(self, x: jnp.ndarray, positions: jnp.ndarray, cache: PredictorCache):
        """One token per row, x [B, 1, D] at positions [B, 1] -> (Q [B, 1, N, H, d'], cache)."""
        x = x.astype(jnp.float32)
        q, k, v = self._mini_qkv(x, positions)
        rows, pos = jnp.arange(x.shape[0]), positions[:, 0]
        cache = cache._replace(k=cache.k.at[rows, :, pos].set(k[:, 0]), v=cache.v.at[rows, :, pos].set(v[:, 0]))
        logits = attention_logits(q, cache.k, kv_layout="bhtd")
        keep = (jnp.arange(cache.k.shape[2]) <= pos[:, None])[:, None, None, :]
        a = masked_attention(logits, keep, cache.v, kv_layout="bhtd")
        qi, ki = self._importance(x, a.reshape(x.shape[0], 1, -1), positions, True)
        return qi, cache._replace(imp_k=cache.imp_k.at[rows, :, :, pos].set(ki[:, 0]))


def importance_logits(qi: jnp.ndarray, ki: jnp.ndarray) -> jnp.ndarray:
    """Predicted logits of one layer: qi [B, Tq, H, d'], ki [B, Tk, H, d'] -> [B, H, Tq, Tk] (f32)."""
    return attention_logits(qi, ki)


def init_predictor(pcfg: PredictorConfig, mcfg: ModelConfig, seed: int = 0) -> dict:
    """Random (Xavier-uniform) predictor parameters."""
    x = jnp.zeros((1, 1, mcfg.hidden_size), jnp.float32)
    return PaperPredictor(pcfg, mcfg).init(jax.random.PRNGKey(seed), x, jnp.zeros((1, 1), jnp.int32))["params"]
