"""Rotary position embeddings (rotate-half layout, as Hugging Face Llama) with frequency scaling.

Scaling types follow HF `rope_scaling`: `default` (none), `linear` (positions divided by
`factor`, i.e. inverse frequencies divided by it), `llama3` (wavelength-dependent smooth
interpolation between unscaled and factor-scaled frequencies) and `longrope` (Phi-3: per-frequency
short / long divisors, the long ones when a call's positions pass the original context, and
cos/sin scaled by an attention factor). With a partial rotary factor only the first `rotary_dim`
dims of each head rotate.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from butler_jax.config import ConfigError, RopeScaling


class RopeTables(NamedTuple):
    """Inverse frequencies [rotary_dim // 2] (float64 numpy) and, for longrope, the long set and
    the position from which it applies (-1: never), plus the cos/sin scale."""

    inv_freq: np.ndarray
    long_inv_freq: np.ndarray
    long_from: int
    scale: float


def _base_inv_freq(rotary_dim: int, theta: float) -> np.ndarray:
    return 1.0 / (theta ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim))


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> np.ndarray:
    """Inverse frequencies [head_dim // 2] (float64 numpy, cast at use) for a rope config
    (`head_dim` here is the rotary dim; for longrope, the short-context set)."""
    return rope_tables(head_dim, theta, scaling).inv_freq


def _longrope(inv_freq: np.ndarray, scaling: RopeScaling) -> RopeTables:
    half = inv_freq.shape[0]
    for name in ("short_factor", "long_factor"):
        if len(getattr(scaling, name)) != half:
            raise ConfigError(
                f"rope_scaling.{name} has {len(getattr(scaling, name))} values; longrope needs one per "
                f"rotary frequency ({half})"
            )
    original, factor = scaling.original_max_position_embeddings, scaling.factor
    scale = scaling.attention_factor
    if scale is None:
        scale = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    short = inv_freq / np.asarray(scaling.short_factor, np.float64)
    long = inv_freq / np.asarray(scaling.long_factor, np.float64)
    return RopeTables(short, long, original, float(scale))


def rope_tables(rotary_dim: int, theta: float, scaling: RopeScaling | None) -> RopeTables:
    """The frequency tables of a rope config."""
    if rotary_dim % 2:
        raise ConfigError(f"rotary dim {rotary_dim} must be even")
    inv_freq = _base_inv_freq(rotary_dim, theta)
    scaling = scaling or RopeScaling()
    plain = lambda f: RopeTables(f, f, -1, 1.0)  # noqa: E731
    if scaling.rope_type == "default":
        return plain(inv_freq)
    if scaling.rope_type == "linear":
        return plain(inv_freq / scaling.factor)
    if scaling.rope_type == "longrope":
        return _longrope(inv_freq, scaling)
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
        return plain(np.where(medium, smoothed, scaled))
    raise ConfigError(
        f"rope_scaling.rope_type={scaling.rope_type!r} is not supported; use default, linear, llama3 or longrope"
    )


def rope_cos_sin(positions: jnp.ndarray, tables: RopeTables | np.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos/sin tables [*positions.shape, rotary_dim] (float32) for integer positions.

    longrope (as transformers): the long frequencies for the whole call when its largest position
    is >= `long_from`, the short ones otherwise."""
    if not isinstance(tables, RopeTables):
        tables = RopeTables(tables, tables, -1, 1.0)
    inv = jnp.asarray(tables.inv_freq, jnp.float32)
    if tables.long_from >= 0:
        inv = jnp.where(jnp.max(positions) >= tables.long_from, jnp.asarray(tables.long_inv_freq, jnp.float32), inv)
    freqs = positions.astype(jnp.float32)[..., None] * inv
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb) * tables.scale, jnp.sin(emb) * tables.scale


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotate the first cos.shape[-1] dims of x [B, T, heads, D] by cos/sin [B, T, R] (rotate-half);
    the remaining D - R dims pass through. Computed in float32."""
    rot = cos.shape[-1]
    half = rot // 2
    xf = x.astype(jnp.float32)
    xr = xf[..., :rot]
    rotated = jnp.concatenate([-xr[..., half:], xr[..., :half]], axis=-1)
    out = xr * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    if rot < x.shape[-1]:
        out = jnp.concatenate([out, xf[..., rot:]], axis=-1)
    return out.astype(x.dtype)
