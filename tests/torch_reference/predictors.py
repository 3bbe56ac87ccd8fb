"""PyTorch references of both TokenButler predictors, written from the specs (tests only).

Module and parameter names follow the original checkpoints (spec original §1, §8; longcontext
§1.2, §1.4), so a state dict of these modules has the layout the converter reads. Nothing here
is copied from the original repositories.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def llama3_inv_freq(dim: int, theta: float, factor: float = 32.0, low: float = 1.0, high: float = 4.0,
                    original: int = 8192) -> torch.Tensor:
    """The forced Llama-3 scaled inverse frequencies of the predictor's RoPE (original §2), float64."""
    inv = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    wavelength = 2 * math.pi / inv
    smooth = (original / wavelength - low) / (high - low)
    mixed = (1 - smooth) * inv / factor + smooth * inv
    out = torch.where(wavelength < original / high, inv, mixed)
    return torch.where(wavelength > original / low, inv / factor, out)


def rotate(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE: x [B, L, heads, dim], positions [B, L]."""
    angles = positions.to(torch.float64)[..., None] * inv_freq  # [B, L, dim/2]
    cos = torch.cat([angles.cos()] * 2, -1)[:, :, None].to(x.dtype)
    sin = torch.cat([angles.sin()] * 2, -1)[:, :, None].to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


class PaperPredictorRef(nn.Module):
    """`TokenImportancePredictorAttentive` from the spec; outputs in the stored head-major slot order."""

    def __init__(self, d: int, heads: int, layers: int, reduce: int, d_dash: int, intdim: int,
                 theta: float, variant: str = "v1") -> None:
        super().__init__()
        r = d // reduce
        self.heads, self.layers, self.d_dash, self.variant = heads, layers, d_dash, variant
        self.input_proj = nn.Linear(d, r, bias=False)
        self.q_proj_attn = nn.Linear(r, r, bias=False)
        self.k_proj_attn = nn.Linear(r, r, bias=False)
        self.v_proj_attn = nn.Linear(r, r, bias=False)
        self.norm1 = nn.LayerNorm(r)
        self.ffn = nn.Sequential(nn.Linear(r, 2 * r), nn.GELU(), nn.Linear(2 * r, d), nn.Dropout(0.1))
        self.norm2 = nn.LayerNorm(d)
        if variant == "v2":
            self.norm_importance = nn.LayerNorm(d)
        out = layers * heads * d_dash
        self.q_proj_importance = nn.Sequential(nn.Linear(d, intdim, bias=False), nn.SiLU(), nn.Linear(intdim, out, bias=False))
        self.k_proj_importance = nn.Sequential(nn.Linear(d, intdim, bias=False), nn.SiLU(), nn.Linear(intdim, out, bias=False))
        self.attn_freq = llama3_inv_freq(r // heads, theta)
        self.imp_freq = llama3_inv_freq(d_dash, theta)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, L, D], positions [B, L] -> Q, K [B, L, S, d'] with slot s = head * N + layer."""
        b, length, _ = x.shape
        u = self.input_proj(x)
        q, k, v = (p(u).view(b, length, self.heads, -1) for p in (self.q_proj_attn, self.k_proj_attn, self.v_proj_attn))
        q, k = rotate(q, positions, self.attn_freq), rotate(k, positions, self.attn_freq)
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        a = nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=causal)
        z = x + self.ffn(self.norm1(a.transpose(1, 2).reshape(b, length, -1)))
        if self.variant == "v2":
            z = self.norm_importance(self.norm2(z))
        qi = self.q_proj_importance(z).view(b, length, -1, self.d_dash)
        ki = self.k_proj_importance(z).view(b, length, -1, self.d_dash)
        return rotate(qi, positions, self.imp_freq), rotate(ki, positions, self.imp_freq)

    def slot(self, layer: int, head: int) -> int:
        """The slot consumer (layer, head) reads: head-major (original §3)."""
        return head * self.layers + layer


class ProducerRef(nn.Module):
    """One long-context producer: LayerNorm + Linear -> SiLU -> Linear, output [B, L, G, H, d']."""

    def __init__(self, d: int, heads: int, group: int, d_dash: int, intdim: int) -> None:
        super().__init__()
        self.shape = (group, heads, d_dash)
        self.norm_importance = nn.LayerNorm(d)
        self.q_mlps = nn.ModuleList([nn.Sequential(nn.Linear(d, intdim, bias=False), nn.SiLU(),
                                                   nn.Linear(intdim, group * heads * d_dash, bias=False))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q_mlps[0](self.norm_importance(x)).view(*x.shape[:2], *self.shape)


class LongctxPredictorRef(nn.Module):
    """Producers at layers 0, G, 2G, ... and the shared key projection [L, Hkv, head_dim, d']."""

    def __init__(self, d: int, heads: int, kv_heads: int, layers: int, head_dim: int, group: int,
                 d_dash: int, intdim: int) -> None:
        super().__init__()
        self.group, self.heads, self.kv_heads, self.d_dash = group, heads, kv_heads, d_dash
        self.producers = nn.ModuleList([ProducerRef(d, heads, group, d_dash, intdim) for _ in range(0, layers - 1, group)])
        self.key_cache_proj = nn.Parameter(torch.randn(layers, kv_heads, head_dim, d_dash) / math.sqrt(head_dim))

    def scores(self, layer: int, residual: torch.Tensor, k_rope: torch.Tensor) -> torch.Tensor:
        """Consumer `layer` (> 0): residual entering its producer [B, Tq, D], model keys [B, T, Hkv, hd]
        -> per-KV-head scores [B, Hkv, Tq, T] = max over the group's query heads of <q, P^T k>/sqrt(d')."""
        producer = (layer - 1) // self.group
        q = self.producers[producer](residual)[:, :, (layer - 1) % self.group]  # [B, Tq, H, d']
        keys = torch.einsum("bthd,hde->bthe", k_rope, self.key_cache_proj[layer])
        q = q.view(*q.shape[:2], self.kv_heads, self.heads // self.kv_heads, self.d_dash)
        s = torch.einsum("bqjgd,btjd->bjgqt", q, keys) / math.sqrt(self.d_dash)
        return s.amax(dim=2)

    def producer_state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """The release's checkpoint list: one dict per producer, each with a full key_cache_proj copy."""
        prefix = "sparse_token_predictor."
        return [{**{prefix + k: v for k, v in p.state_dict().items()}, prefix + "key_cache_proj": self.key_cache_proj.data}
                for p in self.producers]
