"""One colour per method for every evaluation and benchmark plot (colour-blind-safe Okabe-Ito order)."""

from __future__ import annotations

COLORS: dict[str, str] = {
    "dense": "#000000", "tokenbutler": "#D55E00", "oracle": "#0072B2", "h2o": "#009E73",
    "snapkv": "#CC79A7", "quest": "#E69F00", "streamingllm": "#56B4E9",
}
_SPARE = ("#999999", "#F0E442", "#882255", "#44AA99")


def color(method: str) -> str:
    """The colour of `method` (an unknown name gets a stable spare colour)."""
    return COLORS.get(method, _SPARE[sum(map(ord, method)) % len(_SPARE)])
