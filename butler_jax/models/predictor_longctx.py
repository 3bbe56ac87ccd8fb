"""The long-context release's producer predictor.

A producer sits every G = `producer_frequency` layers (layers 0, G, 2G, ...); producer p reads the
residual stream entering layer p (before its input RMSNorm), x [B, T, D], and through LayerNorm ->
Linear(D, I) -> SiLU -> Linear(I, G*H*d') gives importance queries for the G layers p+1 ... p+G
(slot s serves layer p+1+s; layer l > 0 is served by producer ((l-1)//G)*G, slot (l-1) % G).
Keys are not predicted: `key_cache_proj` [L, Hkv, head_dim, d'] projects the model's own
post-RoPE keys per (layer, KV head). Score of query head h (KV head j) on token t at layer l:
q[l, h] . (P[l, j]^T k[l, j, t]) / sqrt(d'); per-KV-head selection takes the max over the group.
A release that stores P per attention head [L, H, head_dim, d'] (`key_proj_heads: attention`) keeps
it as stored; P[l, j] is then the float32 mean over the group of KV head j, taken at use.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from butler_jax.config import ModelConfig, PredictorConfig


def producer_layers(num_layers: int, frequency: int) -> tuple[int, ...]:
    """Layers holding a producer: 0, G, 2G, ... below the last layer."""
    return tuple(range(0, num_layers - 1, frequency))


def serving(layer: int, frequency: int) -> tuple[int, int]:
    """(producer layer, slot) that serves consumer `layer` (> 0)."""
    return ((layer - 1) // frequency) * frequency, (layer - 1) % frequency


def key_proj_shape(pcfg: PredictorConfig, mcfg: ModelConfig) -> tuple[int, int, int, int]:
    """[L, heads, head_dim, d'] of key_cache_proj: heads = Hkv, or H when stored per attention head."""
    heads = mcfg.num_attention_heads if pcfg.key_proj_heads == "attention" else mcfg.num_key_value_heads
    return mcfg.num_hidden_layers, heads, mcfg.resolved_head_dim, pcfg.dDash


def longctx_param_count(pcfg: PredictorConfig, mcfg: ModelConfig) -> int:
    """Per producer 2D + D*I + I*G*H*d', times the producers, + L*heads*head_dim*d' key projections."""
    d, g, h = mcfg.hidden_size, pcfg.producer_frequency, mcfg.num_attention_heads
    per_producer = 2 * d + d * pcfg.intdim + pcfg.intdim * g * h * pcfg.dDash
    n = len(producer_layers(mcfg.num_hidden_layers, g))
    return n * per_producer + math.prod(key_proj_shape(pcfg, mcfg))


class Producer(nn.Module):
    """LayerNorm + 2-layer SiLU MLP: x [B, T, D] -> queries [B, T, G, H, d']."""

    pcfg: PredictorConfig
    mcfg: ModelConfig

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        g, h, dd = self.pcfg.producer_frequency, self.mcfg.num_attention_heads, self.pcfg.dDash
        z = nn.LayerNorm(epsilon=1e-5, name="norm_importance")(x.astype(jnp.float32))
        z = nn.silu(nn.Dense(self.pcfg.intdim, use_bias=False, name="mlp_0", kernel_init=nn.initializers.xavier_uniform())(z))
        out = nn.Dense(g * h * dd, use_bias=False, name="mlp_2", kernel_init=nn.initializers.xavier_uniform())(z)
        return out.reshape(*x.shape[:2], g, h, dd)


class LongctxPredictor(nn.Module):
    """Producers + key projections. Methods: `queries(layer, x)`, `project_keys(layer, k)`."""

    pcfg: PredictorConfig
    mcfg: ModelConfig

    def setup(self) -> None:
        self.producers = {p: Producer(self.pcfg, self.mcfg, name=f"producer_{p}")
                          for p in producer_layers(self.mcfg.num_hidden_layers, self.pcfg.producer_frequency)}
        scale = 1 / math.sqrt(self.mcfg.resolved_head_dim)
        self.key_cache_proj = self.param("key_cache_proj", nn.initializers.normal(scale), key_proj_shape(self.pcfg, self.mcfg))

    def queries(self, layer: int, residual: jnp.ndarray) -> jnp.ndarray:
        """Producer at `layer`: residual [B, T, D] -> [B, T, G, H, d'] queries for layers layer+1..layer+G."""
        return self.producers[layer](residual)

    def project_keys(self, layer: int, k: jnp.ndarray) -> jnp.ndarray:
        """Post-RoPE keys k [B, T, Hkv, hd] -> importance keys [B, T, Hkv, d'] (float32)."""
        proj = self.key_cache_proj[layer].astype(jnp.float32)
        if proj.shape[0] != self.mcfg.num_key_value_heads:  # per attention head: the mean of each KV group
            proj = proj.reshape(self.mcfg.num_key_value_heads, self.mcfg.num_groups, *proj.shape[1:]).mean(1)
        return jnp.einsum("bthd,hde->bthe", k.astype(jnp.float32), proj)

    def __call__(self, residual: jnp.ndarray, k: jnp.ndarray) -> jnp.ndarray:
        """Init helper touching every parameter: residual [B, T, D], k [B, T, Hkv, hd]."""
        return sum(self.queries(p, residual).sum() for p in self.producers) + self.project_keys(0, k).sum()


def longctx_scores(queries: jnp.ndarray, keys: jnp.ndarray) -> jnp.ndarray:
    """queries [B, Tq, H, d'] against keys [B, Tk, Hkv, d'] -> per-query-head scores [B, H, Tq, Tk] (f32)."""
    from butler_jax.attention import attention_logits

    return attention_logits(queries, keys)


def int8_scale(keys: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
    """Symmetric int8 scale per KV head: max |k̂| over the valid (row, position, d')
    entries of a prefill block / 127, at least 1e-8. keys [B, T, Hkv, d'], valid [B, T] bool -> [Hkv] f32."""
    peak = jnp.max(jnp.where(valid[:, :, None, None], jnp.abs(keys.astype(jnp.float32)), 0.0), axis=(0, 1, 3))
    return jnp.maximum(peak / 127.0, 1e-8)


def quantize_keys(keys: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
    """keys [B, T, Hkv, d'] -> int8 round(k̂ / scale[Hkv]) clipped to [-128, 127] (later tokens reuse the scale)."""
    return jnp.clip(jnp.round(keys.astype(jnp.float32) / scale[:, None]), -128, 127).astype(jnp.int8)


def dequantize_keys(q: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
    """int8 keys [B, T, Hkv, d'] -> float32 k̂ ≈ q * scale[Hkv]."""
    return q.astype(jnp.float32) * scale[:, None]
