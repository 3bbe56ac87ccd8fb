"""Length fitting: the largest haystack size whose prompt stays within a token budget."""

from __future__ import annotations

from typing import Callable

Count = Callable[[int], int]


def fit_size(count: Count, budget: int, min_size: int, max_size: int | None, guess: int | None = None,
             tolerance: float = 0.02, name: str = "task") -> int:
    """Binary-search the largest size in [min_size, max_size] with count(size) <= budget.

    `count(size)` is the token length of the prompt built with that size (roughly increasing).
    Raises ValueError when even `min_size` is over budget, or when the best size falls more than
    `tolerance` short of the budget (a haystack too coarse or too small for this length).
    """
    if count(min_size) > budget:
        raise ValueError(f"{name}: the smallest prompt ({count(min_size)} tokens) is over the budget of "
                         f"{budget} tokens; use a longer context length")
    lo, hi = min_size, max(min_size + 1, 2 * min_size)
    if guess:  # bracket around a previous sample's size first: fewer tokenizations
        near = max(min_size, int(0.9 * guess))
        lo, hi = (near if count(near) <= budget else lo), max(near + 1, int(1.1 * guess))
    while count(hi) <= budget:  # grow until over budget (or the source runs out)
        if max_size is not None and hi >= max_size:
            lo = hi = max_size
            break
        lo, hi = hi, hi * 2 if max_size is None else min(hi * 2, max_size)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= budget else (lo, mid)
    got = count(lo)
    if got < (1 - tolerance) * budget:
        raise ValueError(f"{name}: the closest prompt has {got} tokens, more than {tolerance:.0%} below the "
                         f"budget of {budget}" + (" (the data source ran out)" if lo == max_size else ""))
    return lo
