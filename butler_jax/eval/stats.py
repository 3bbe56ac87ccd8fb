"""Confidence intervals for evaluation figures: bootstrap over samples (or windows), paired differences."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

N_BOOT = 2000
LEVEL = 0.95


def bootstrap_ci(values: Sequence[float] | np.ndarray, statistic: Callable[[np.ndarray], float] | None = None,
                 seed: int = 0, n_boot: int = N_BOOT) -> tuple[float, float, float]:
    """(estimate, low, high): `statistic` (default mean) of `values` [N] or [N, k] rows and its percentile
    bootstrap 95 % interval, resampling rows with replacement. With one value the interval is that value."""
    data = np.asarray(values, np.float64)
    stat = statistic or (lambda x: float(np.mean(x)))
    estimate = float(stat(data))
    if len(data) < 2:
        return estimate, estimate, estimate
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(data), size=(n_boot, len(data)))
    boots = np.array([stat(data[i]) for i in idx])
    tail = 100 * (1 - LEVEL) / 2
    return estimate, float(np.percentile(boots, tail)), float(np.percentile(boots, 100 - tail))


def mean_of_means_ci(groups: Sequence[Sequence[float]], seed: int = 0, n_boot: int = N_BOOT) -> tuple[float, float, float]:
    """(estimate, low, high): the unweighted mean of the group means (e.g. of RULER's task scores, each
    group [n_i]) and its bootstrap 95 % interval, resampling within each group."""
    arrays = [np.asarray(g, np.float64) for g in groups]
    rng = np.random.default_rng(seed)
    boots = np.mean([a[rng.integers(0, len(a), size=(n_boot, len(a)))].mean(axis=1) for a in arrays], axis=0)
    tail = 100 * (1 - LEVEL) / 2
    return (float(np.mean([a.mean() for a in arrays])), float(np.percentile(boots, tail)),
            float(np.percentile(boots, 100 - tail)))


def perplexity_ci(nll_sums: Sequence[float], counts: Sequence[float], seed: int = 0) -> tuple[float, float, float]:
    """Perplexity exp(sum NLL / sum tokens) over windows and its bootstrap 95 % interval over windows."""
    rows = np.stack([np.asarray(nll_sums, np.float64), np.asarray(counts, np.float64)], axis=1)
    return bootstrap_ci(rows, lambda r: float(np.exp(r[:, 0].sum() / r[:, 1].sum())), seed)


def paired_difference(a: Mapping[str, float], b: Mapping[str, float], seed: int = 0) -> dict[str, float]:
    """Method A vs B on the same samples: mean of a[s] - b[s] over the shared sample ids, its 95 % CI,
    n, and whether the interval excludes 0. Raises when the two share no sample."""
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError("paired_difference: the two methods share no sample id; run both on the same samples")
    mean, low, high = bootstrap_ci([a[s] - b[s] for s in shared], seed=seed)
    return {"n": len(shared), "mean": mean, "ci_low": low, "ci_high": high, "excludes_zero": bool(low > 0 or high < 0)}
