"""Quest: page-level upper bounds from per-channel key min/max, top pages per query.

A page of `page_size` tokens scores sum_c max(q_c * max_c, q_c * min_c) (an upper bound of
q.k over the page); every token takes its page's score (per-KV-head selection: the max of the
group's bounds, a page any head may need). The page holding the query ranks first (it is the
most recent one; in simulation its bound would see future tokens), and the current token is
always kept (a recent window of at least one token) even when the budget is smaller than a page.
All of it sits inside the budget. With page_size 1 the bound is q.k itself, nothing is forced,
and Quest equals Oracle's per-query-head order.
"""

from __future__ import annotations

import jax.numpy as jnp

from butler_jax.sparsity.base import register
from butler_jax.sparsity.scored import ScoredPolicy


def page_bounds(k: jnp.ndarray, page_size: int, valid: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-page channel max/min of keys k [B, Hkv, T, D] over valid [B, 1, T] tokens -> [B, Hkv, P, D] each."""
    b, h, t, d = k.shape
    pad = (-t) % page_size
    kf = jnp.pad(k.astype(jnp.float32), ((0, 0), (0, 0), (0, pad), (0, 0)))
    ok = jnp.pad(valid, ((0, 0), (0, 0), (0, pad)))[..., None]
    pages = kf.reshape(b, h, -1, page_size, d)
    ok = ok.reshape(b, 1, -1, page_size, 1)
    return jnp.where(ok, pages, -jnp.inf).max(3), jnp.where(ok, pages, jnp.inf).min(3)


def page_scores(q: jnp.ndarray, kmax: jnp.ndarray, kmin: jnp.ndarray) -> jnp.ndarray:
    """q [B, Tq, Hq, D] against page bounds [B, Hkv, P, D] -> [B, Hq, Tq, P] upper bounds."""
    b, tq, hq, d = q.shape
    hkv = kmax.shape[1]
    qg = q.astype(jnp.float32).reshape(b, tq, hkv, hq // hkv, d)[..., None, :]  # b t h g 1 d
    hi = jnp.maximum(qg * kmax[:, None, :, None], qg * kmin[:, None, :, None])  # b t h g P d
    bound = jnp.where(jnp.isfinite(hi), hi, 0.0).sum(-1)
    return bound.reshape(b, tq, hq, -1).transpose(0, 2, 1, 3)


@register("quest")
class QuestPolicy(ScoredPolicy):
    """Page-granular query-aware selection (`sparsity.page_size`)."""

    @property
    def page_size(self) -> int:
        return self.settings.page_size

    @property
    def n_recent(self) -> int:
        return max(self.settings.n_window, 1 if self.page_size > 1 else 0)

    def _token_scores(self, q, k, q_pos, k_valid, k_pos=None):
        """Token scores [B, Hs, Tq, T] of keys k [B, Hkv, T, D] at positions k_pos [T] (default 0..T-1;
        a sharded decode's device range starts at a multiple of the page size)."""
        kmax, kmin = page_bounds(k, self.page_size, k_valid)
        scores = self.reduce_heads(page_scores(q, kmax, kmin))  # [B, Hs, Tq, P]
        t = k.shape[2]
        tokens = jnp.repeat(scores, self.page_size, axis=-1)[..., :t]
        if self.page_size == 1:
            return tokens
        k_pos = jnp.arange(t) if k_pos is None else k_pos
        own_page = (k_pos // self.page_size) == (q_pos[:, None, :, None] // self.page_size)
        return jnp.where(own_page, jnp.inf, tokens)

    def decode_scores(self, params, layer, x, cache, state):
        pos, slots = cache.lengths, self.positions(cache.capacity)
        valid = (slots[None, :] <= pos[:, None])[:, None]
        return self._token_scores(x.q, cache.k[layer], pos[:, None], valid, slots)[:, :, 0], state

    def simulated_scores(self, params, layer, x, rows, logits, carry):
        k = jnp.swapaxes(x.k, 1, 2)
        valid = jnp.ones((k.shape[0], 1, k.shape[2]), bool)
        return self._token_scores(x.q[:, rows], k, x.positions[:, rows], valid)
