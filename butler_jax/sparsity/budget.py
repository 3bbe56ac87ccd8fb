"""Token budgets: a fixed count, or a kept fraction of the visible tokens (`fixed_60pc` = 60 % sparsity)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import jax.numpy as jnp

_FIXED_PC = re.compile(r"^fixed_(\d+(?:\.\d+)?)pc$")


@dataclass(frozen=True)
class Budget:
    """Exactly one of `tokens` (kept per head and step) or `keep_fraction` (of the visible tokens)."""

    tokens: int | None = None
    keep_fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.tokens is None) == (self.keep_fraction is None):
            raise ValueError("a Budget needs exactly one of tokens or keep_fraction")
        if self.tokens is not None and self.tokens < 1:
            raise ValueError(f"budget tokens={self.tokens} must be >= 1")
        if self.keep_fraction is not None and not 0 < self.keep_fraction <= 1:
            raise ValueError(f"budget keep_fraction={self.keep_fraction} must be in (0, 1]")

    def kept(self, visible: jnp.ndarray) -> jnp.ndarray:
        """Tokens kept for rows that see `visible` tokens: min(K, visible), K = ceil(visible * f) or tokens."""
        if self.tokens is not None:
            return jnp.minimum(visible, self.tokens)
        return jnp.minimum(visible, jnp.ceil(visible * self.keep_fraction).astype(jnp.int32))

    def max_kept(self, capacity: int) -> int:
        """Static upper bound on kept tokens for a cache of `capacity` (sizes the index lists)."""
        if self.tokens is not None:
            return min(self.tokens, capacity)
        return min(capacity, math.ceil(capacity * self.keep_fraction))

    @property
    def label(self) -> str:
        return f"{self.tokens}tok" if self.tokens is not None else f"{round((1 - self.keep_fraction) * 100)}pc"


def parse_budget(spec: str | int | float) -> Budget:
    """`2048` -> 2048 tokens; `fixed_60pc` / `60%` -> 60 % sparsity (keep 40 %); `0.4` -> keep 40 %."""
    if isinstance(spec, bool):
        raise ValueError(f"budget {spec!r} must be a token count, a keep fraction or 'fixed_XXpc'")
    if isinstance(spec, int):
        return Budget(tokens=spec)
    if isinstance(spec, float):
        return Budget(keep_fraction=spec)
    text = str(spec).strip()
    match = _FIXED_PC.match(text) or re.match(r"^(\d+(?:\.\d+)?)%$", text)
    if match:
        sparsity = float(match.group(1))
        if not 0 <= sparsity < 100:
            raise ValueError(f"budget {spec!r}: sparsity must be in [0, 100)")
        return Budget(keep_fraction=1 - sparsity / 100)
    try:
        number = float(text)
    except ValueError:
        raise ValueError(
            f"budget {spec!r} is not understood; use a token count (2048), a keep fraction (0.5) "
            "or a sparsity string (fixed_50pc, 50%)"
        ) from None
    return Budget(tokens=int(number)) if number.is_integer() and number >= 1 else Budget(keep_fraction=number)
