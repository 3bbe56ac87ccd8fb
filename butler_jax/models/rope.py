"""Rotary position embeddings (rotate-half layout, as Hugging Face Llama) with frequency scaling.

Scaling types follow HF `rope_scaling`: `default` (none), `linear` (positions divided by
`factor`, i.e. inverse frequencies divided by it) and `llama3` (wavelength-dependent smooth
interpolation between unscaled and factor-scaled frequencies).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from butler_jax.config import ConfigError, RopeScaling


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> np.ndarray:
    """Inverse frequencies [head_dim // 2] (float64 numpy, cast at use) for a rope config."""
    if head_dim % 2:
        raise ConfigError(f"rotary head_dim={head_dim} must be even")
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    scaling = scaling or RopeScaling()
    if scaling.rope_type == "default":
        return inv_freq
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    if scaling.rope_type == "llama3":
        old_len = scaling.original_max_position_embeddings
        low_wavelen = old_len / scaling.low_freq_factor
        high_wavelen = old_len / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
        smooth = (old_len / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled)
    raise ConfigError(
        f"rope_scaling.rope_type={scaling.rope_type!r} is not supported; use default, linear or llama3"
    )


def rope_cos_sin(positions: jnp.ndarray, inv_freq: np.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos/sin tables [*positions.shape, head_dim] (float32) for integer positions."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotate x [B, T, heads, D] by cos/sin [B, T, D] (rotate-half); computed in float32."""
    half = x.shape[-1] // 2
    xf = x.astype(jnp.float32)
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)
