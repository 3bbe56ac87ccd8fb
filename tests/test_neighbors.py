"""Neighbour fetching against a literal numpy transcription of the release's steps (listed in
butler_jax/sparsity/neighbors.py)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from butler_jax.sparsity.neighbors import expand_neighbor_mask, expand_neighbors


def spec_expand(selected: list[int], end: int, k: int) -> list[int]:
    """The spec's buffer for sorted indices I (n <= K) with selectable end E and capacity 2K (duplicates kept)."""
    i = np.asarray(sorted(selected), np.int64)
    n = len(i)
    if n == 0:
        return []
    # 1. run lengths
    starts = np.flatnonzero(np.concatenate([[True], np.diff(i) != 1]))
    bounds = np.append(starts, n)
    c = np.repeat(np.diff(bounds), np.diff(bounds))
    # 2. neighbours
    nbr = np.minimum(i + c, end - 1)
    # 3. union: sort, entries equal to their predecessor -> sentinel E, sort again
    a = np.sort(np.concatenate([i, nbr]))
    dup = np.concatenate([[False], a[1:] == a[:-1]])
    a = np.sort(np.where(dup, end, a))
    # 4. fixed size 2K: truncate, or pad by repeating the last element
    if len(a) >= 2 * k:
        a = a[: 2 * k]
    else:
        a = np.concatenate([a, np.full(2 * k - len(a), a[-1])])
    # 5. sentinel fill: entries >= E -> last_valid + 1, + 2, ... clamped to E - 1
    last = a[a < end].max()
    sentinel = a >= end
    a[sentinel] = np.minimum(last + np.arange(1, sentinel.sum() + 1), end - 1)
    return a.tolist()


def random_selection(rng, end: int, n: int, lo: int = 0) -> np.ndarray:
    """n distinct sorted indices in [lo, end), with runs (random walk of gaps 1..3) and end - 1 often included."""
    if rng.random() < 0.5:
        picked = set(rng.choice(np.arange(lo, end), size=n, replace=False).tolist())
    else:
        gaps = rng.choice([1, 1, 1, 2, 3], size=n)
        picked = set((lo + np.cumsum(gaps) - 1).tolist())
        picked = {p for p in picked if p < end}
        rest = [p for p in range(lo, end) if p not in picked]
        picked |= set(rng.choice(rest, size=n - len(picked), replace=False).tolist()) if n > len(picked) else set()
    if rng.random() < 0.4 and end - 1 not in picked:
        picked.discard(min(picked))
        picked.add(end - 1)
    return np.asarray(sorted(picked))


def pack(rows: list[np.ndarray], width: int, shuffle_rng=None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of indices -> [R, width] indices (invalid slots 0) and validity; optionally shuffled per row."""
    idx = np.zeros((len(rows), width), np.int32)
    ok = np.zeros((len(rows), width), bool)
    for r, row in enumerate(rows):
        idx[r, : len(row)] = row
        ok[r, : len(row)] = True
        if shuffle_rng is not None:
            perm = shuffle_rng.permutation(width)
            idx[r], ok[r] = idx[r, perm], ok[r, perm]
    return idx, ok


def spread(idx: np.ndarray, ok: np.ndarray, width: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Each row's valid entries, in order, at random slots of a wider row (garbage in the invalid ones)."""
    out = rng.integers(0, 100, (len(idx), width)).astype(np.int32)
    out_ok = np.zeros((len(idx), width), bool)
    for r in range(len(idx)):
        vals = idx[r][ok[r]]
        at = np.sort(rng.choice(width, size=len(vals), replace=False))
        out[r, at], out_ok[r, at] = vals, True
    return out, out_ok


def check_rows(out: np.ndarray, out_ok: np.ndarray, expected: list[set[int]], ends: np.ndarray) -> None:
    for r, want in enumerate(expected):
        got = out[r][out_ok[r]]
        assert len(set(got.tolist())) == len(got), "no duplicates"
        assert (got < ends[r]).all()
        assert set(got.tolist()) == want
        assert (out[r][~out_ok[r]] == 0).all()


@pytest.mark.parametrize("shuffle", [False, True])
def test_expand_neighbors_matches_the_spec_at_full_selection(shuffle) -> None:
    """n = K (the budget is full): the expansion gives the set of the spec's 2K buffer."""
    rng = np.random.default_rng(11 + shuffle)
    width = 12
    rows, ends, expected = [], [], []
    for _ in range(64):
        n = int(rng.integers(0, width + 1))
        end = int(rng.integers(n, 3 * width))
        lo = int(rng.integers(0, 3))
        end = max(end, n + lo)
        sel = random_selection(rng, end, n, lo) if n else np.zeros(0, np.int64)
        rows.append(sel)
        ends.append(end)
        expected.append(set(spec_expand(sel.tolist(), end, n)))
    idx, ok = pack(rows, width, rng if shuffle else None)
    ends = np.asarray(ends)
    out, out_ok = expand_neighbors(jnp.asarray(idx), jnp.asarray(ok), jnp.asarray(ends), 2 * width,
                                   n_tokens=int(ends.max()))
    check_rows(np.asarray(out), np.asarray(out_ok), expected, ends)
    if not shuffle:  # ascending=True: valid entries in order with invalid slots spread among them
        spread_idx, spread_ok = spread(idx, ok, 2 * width, rng)
        out, out_ok = expand_neighbors(jnp.asarray(spread_idx), jnp.asarray(spread_ok), jnp.asarray(ends), 4 * width,
                                       n_tokens=int(ends.max()) + 5,
                                       ascending=True)
        check_rows(np.asarray(out), np.asarray(out_ok), expected, ends)
    # the mask form gives the same sets
    t = int(ends.max()) + 2
    mask = np.zeros((len(rows), t), bool)
    for r, row in enumerate(rows):
        mask[r, row] = True
    wide = np.asarray(expand_neighbor_mask(jnp.asarray(mask), jnp.asarray(ends)))
    for r, want in enumerate(expected):
        assert set(np.flatnonzero(wide[r]).tolist()) == want


def test_expand_neighbors_pads_when_everything_selectable_is_selected() -> None:
    """n < K only happens when I = [S, E): padding and fill add nothing, E - 1 is not repeated."""
    rows, ends, expected = [], [], []
    for s, end, k in [(2, 9, 10), (0, 1, 4), (3, 4, 6), (5, 5, 3), (1, 7, 6)]:
        sel = np.arange(s, end)
        rows.append(sel)
        ends.append(end)
        buffer = spec_expand(sel.tolist(), end, k)
        assert len(buffer) == (2 * k if len(sel) else 0)
        expected.append(set(buffer))
        assert set(buffer) == set(sel.tolist())
    idx, ok = pack(rows, 10)
    out, out_ok = expand_neighbors(jnp.asarray(idx), jnp.asarray(ok), jnp.asarray(ends), 20, n_tokens=9)
    check_rows(np.asarray(out), np.asarray(out_ok), expected, np.asarray(ends))


def test_expand_neighbors_runs_isolated_tokens_and_the_end() -> None:
    idx = jnp.asarray([[3, 4, 5, 9, 12, 13, 0, 0], [2, 7, 19, 0, 0, 0, 0, 0], [10, 11, 18, 19, 0, 0, 0, 0]], jnp.int32)
    ok = jnp.asarray([[1] * 6 + [0] * 2, [1] * 3 + [0] * 5, [1] * 4 + [0] * 4], bool)
    out, out_ok = expand_neighbors(idx, ok, jnp.asarray([15, 20, 20]), 16, n_tokens=20)
    got = [sorted(np.asarray(o)[np.asarray(v)].tolist()) for o, v in zip(out, out_ok)]
    # run 3..5 -> 6..8, isolated 9 -> 10, run 12..13 -> 14 and 15 clamped to 14; fill 15 > E - 1: none
    assert got[0] == [3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14]
    # 2 -> 3, 7 -> 8, 19 -> min(20, E - 1) = 19 (a duplicate); its fill slot, 20, clamps to 19: dropped
    assert got[1] == [2, 3, 7, 8, 19]
    # 10..11 -> 12..13; 18..19 -> clamped to 19 twice: two duplicates, fill from 20 is clamped
    assert got[2] == [10, 11, 12, 13, 18, 19]
    # duplicates away from the end free slots, filled after the last token: run 4..6 -> 7..9, 8 -> 9;
    # the union 4..9 has two duplicates (8, 9), so 10 and 11 join
    out, out_ok = expand_neighbors(jnp.asarray([[4, 5, 6, 8, 0]]), jnp.asarray([[1, 1, 1, 1, 0]], bool), jnp.asarray([30]), 10,
                                   n_tokens=64)
    assert sorted(np.asarray(out)[np.asarray(out_ok)].tolist()) == spec_expand([4, 5, 6, 8], 30, 4) == list(range(4, 12))


def test_expand_neighbors_truncates_to_out_size() -> None:
    rng = np.random.default_rng(3)
    rows, ends = [], []
    for _ in range(16):
        end = int(rng.integers(20, 40))
        rows.append(random_selection(rng, end, 8))
        ends.append(end)
    idx, ok = pack(rows, 8)
    full, full_ok = expand_neighbors(jnp.asarray(idx), jnp.asarray(ok), jnp.asarray(ends), 16, n_tokens=40)
    cut, cut_ok = expand_neighbors(jnp.asarray(idx), jnp.asarray(ok), jnp.asarray(ends), 10, n_tokens=40)
    for r, row in enumerate(rows):
        lowest = sorted(set(spec_expand(row.tolist(), ends[r], 8)))[:10]
        assert np.asarray(cut[r])[np.asarray(cut_ok[r])].tolist() == lowest
        assert sorted(np.asarray(full[r])[np.asarray(full_ok[r])].tolist())[:10] == lowest
    # batch dimensions and a scalar end broadcast
    out, out_ok = expand_neighbors(jnp.asarray(idx.reshape(2, 8, 8)), jnp.asarray(ok.reshape(2, 8, 8)), jnp.asarray(40), 16,
                                   n_tokens=40)
    assert out.shape == out_ok.shape == (2, 8, 16)
