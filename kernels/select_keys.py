"""Order-preserving int32 selection keys shared by the top-K kernels (`topk_select`).

Every score maps to an int32 key (f32 bits, negatives flipped; bf16 keys keep 16 significant
bits); forced tokens (sinks [0, n_sink) and the window [length - n_recent, length)) get
FORCED_KEY, above every score key; tokens at t >= length get INVALID_KEY (INT32_MIN), below every
score key (-inf included). NaN ranks above +inf (clamped to _MAX_SCORE_KEY).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

INVALID_KEY = np.int32(np.iinfo(np.int32).min)
FORCED_KEY = np.int32(0x7FFF0000)  # low 16 bits zero: bf16 rows still resolve in 4 passes.
_MAX_SCORE_KEY = np.int32(0x7FFE0000)  # only NaN keys lie outside [MIN, MAX]; clamp them.
_MIN_SCORE_KEY = np.int32(np.iinfo(np.int32).min + 0x10000)
_HI_ALL = np.int32(FORCED_KEY + 1)  # bracket bound above every key


def select_keys(scores: jax.Array, pos: jax.Array, lengths: jax.Array, n_sink: int, n_recent: int):
    """Order-preserving int32 keys with forced / invalid tokens marked. scores [..., T] -> int32."""
    bits = jax.lax.bitcast_convert_type(scores.astype(jnp.float32), jnp.int32)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    if scores.dtype == jnp.bfloat16:
        key = key & np.int32(-65536)  # negatives flipped their zero low half; clear it again
    key = jnp.clip(key, _MIN_SCORE_KEY, _MAX_SCORE_KEY)
    forced = (pos < n_sink) | (pos >= lengths - n_recent)
    key = jnp.where(forced, FORCED_KEY, key)
    return jnp.where(pos < lengths, key, INVALID_KEY)


def check_select_args(scores: jax.Array, k: int, lengths, n_sink: int, n_recent: int) -> jax.Array:
    """Validate top-K arguments; -> lengths [R] int32 (T where None)."""
    if scores.ndim != 2:
        raise ValueError(f"scores must be [R, T], got shape {scores.shape}")
    if scores.dtype not in (jnp.float32, jnp.bfloat16):
        raise ValueError(f"scores must be float32 or bfloat16, got {scores.dtype}")
    r, t = scores.shape
    if not 0 < k <= t:
        raise ValueError(f"k must be in [1, T={t}], got k={k}")
    if n_sink < 0 or n_recent < 0 or n_sink + n_recent > k:
        raise ValueError(f"need 0 <= n_sink, n_recent and n_sink + n_recent <= k={k}; "
                         f"got n_sink={n_sink}, n_recent={n_recent}")
    if lengths is None:
        return jnp.full((r,), t, jnp.int32)
    if lengths.shape != (r,):
        raise ValueError(f"lengths must be [R={r}], got shape {lengths.shape}")
    return lengths.astype(jnp.int32)
