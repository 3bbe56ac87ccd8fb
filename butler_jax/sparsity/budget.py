"""Token budgets: a fixed count, or a kept fraction of the visible tokens (`fixed_60pc` = 60 % sparsity).

Spellings (`parse_budget`): `512` / `tokens=512`, `keep=0.4`, `sparsity=0.6` / `fixed_60pc`."""

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


_EXPLICIT = re.compile(r"^(keep|sparsity|tokens)\s*=\s*(\S+)$")
_FORMS = "tokens=512 (or 512), keep=0.3 (keep 30 %), sparsity=0.3 or fixed_30pc (drop 30 %)"


def parse_budget(spec: str | int | float) -> Budget:
    """One reading per spelling: `512` / `tokens=512` -> 512 tokens; `keep=0.3` -> keep 30 %;
    `sparsity=0.3` / `fixed_30pc` -> drop 30 % (keep 70 %). A bare fraction (`0.3`, `30%`) is
    ambiguous (kept or dropped?) and rejected."""
    if isinstance(spec, bool) or not isinstance(spec, (int, float, str)):
        raise ValueError(f"budget {spec!r} is not understood; use {_FORMS}")
    text = str(spec).strip()
    if isinstance(spec, int) or text.isdigit():
        return _tokens(spec, text)
    match = _FIXED_PC.match(text)
    if match:
        return _sparsity(spec, float(match.group(1)) / 100)
    match = _EXPLICIT.match(text)
    if match:
        kind, value = match.groups()
        if kind == "tokens":
            return _tokens(spec, value)
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"budget {spec!r}: {value!r} is not a number; use {_FORMS}") from None
        if not 0 <= number <= 1:
            raise ValueError(f"budget {spec!r}: {kind} is a fraction in [0, 1], got {number}")
        return _sparsity(spec, number) if kind == "sparsity" else _keep(spec, number)
    if re.match(r"^\d*\.?\d+%?$", text):
        fraction = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
        if fraction > 1:
            raise ValueError(f"budget {spec!r}: a token count must be an integer (tokens=N); a fraction must be <= 1")
        raise ValueError(
            f"budget {spec!r} is ambiguous: it could mean keep={fraction:g} (keep {fraction:.0%} of the tokens) "
            f"or sparsity={fraction:g} (drop {fraction:.0%}); write one of those, or tokens=N for a token count"
        )
    raise ValueError(f"budget {spec!r} is not understood; use {_FORMS}")


def _tokens(spec: object, value: str) -> Budget:
    if not str(value).isdigit() or int(value) < 1:
        raise ValueError(f"budget {spec!r}: a token count must be an integer >= 1")
    return Budget(tokens=int(value))


def _keep(spec: object, fraction: float) -> Budget:
    if fraction <= 0:
        raise ValueError(f"budget {spec!r} keeps no token; keep must be in (0, 1]")
    return Budget(keep_fraction=fraction)


def _sparsity(spec: object, fraction: float) -> Budget:
    if not 0 <= fraction < 1:
        raise ValueError(f"budget {spec!r}: sparsity must be in [0, 1) (fixed_XXpc: XX in [0, 100))")
    return Budget(keep_fraction=1 - fraction)
