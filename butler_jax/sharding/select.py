"""Exact top-K selection over a sequence-sharded score row: every device selects among its own
tokens, and the union is index for index what `sparsity.select.decode_select` picks on one device.

Both one-device paths select, per row, the `take` largest of an order-preserving int32 key per
token, ties to the lower index, never an INVALID key:
- the kernel path (`selects_ascending`): keys = `kernels.select_keys` (forced sinks / window above
  every score, tokens past the query INVALID), take = min(query_pos + 1, k_max);
- the lax.top_k path: forced tokens (`forced_keys`, cut to the budget) get FORCED_KEY, other visible
  tokens their score's key (-inf scores, never taken there, INVALID), take = budget.kept.

The exchange, per (batch row, selection head):
1. each device takes its local top-min(k_max, Tl) keys (`lax.top_k`: sorted, ties to the lower
   local index); a device never contributes more than that to the global selection;
2. `all_gather` of those sorted key lists (N x k_max int32) over the seq axis;
3. every device finds the same global cut th = the take-th largest gathered key (a 32-step radix
   search in registers of the gathered keys), then counts per device the keys > th and the ties
   == th; the ties go to the lowest devices first (lower global indices), so device s keeps
   c_s = above_s + clip(take - sum(above) - ties before s, 0, ties_s) (no ties if th is INVALID);
4. device s's selection is the first c_s entries of its sorted local list.
Device order is global index order and each local list breaks ties by lower index, so ties fall
exactly as in the one-device top-K. With one device the exchange is the identity and
`decode_select` runs unchanged (its Pallas top-K kernel on a GPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from butler_jax.kernels.select_keys import FORCED_KEY, INVALID_KEY, select_keys
from butler_jax.sharding.local import Shard
from butler_jax.sparsity.budget import Budget
from butler_jax.sparsity.select import decode_select, forced_keys, selects_ascending


def selection_keys(scores: jnp.ndarray, pos: jnp.ndarray, query_pos: jnp.ndarray, budget: Budget, k_max: int,
                   n_sink: int, n_window: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(keys [B, Hs, Tl] int32, take [B]) of the one-device rule that `decode_select` applies.

    scores: [B, Hs, Tl] at global positions pos [Tl]; query_pos: [B]."""
    length = query_pos + 1
    if selects_ascending(budget, k_max, n_sink, n_window):
        keys = select_keys(scores, pos[None, None, :], length[:, None, None], n_sink, n_window)
        return keys, jnp.minimum(length, k_max)
    kept = budget.kept(length)
    forced = forced_keys(pos, query_pos, n_sink, n_window, kept)[:, None, :]
    visible = (pos[None, :] <= query_pos[:, None])[:, None, :]
    finite = jnp.minimum(scores.astype(jnp.float32), jnp.finfo(jnp.float32).max) + 0.0  # -0.0 ties 0.0 as in top_k
    ranked = select_keys(finite, pos, jnp.int32(np.iinfo(np.int32).max), 0, 0)
    keys = jnp.where(forced, FORCED_KEY, jnp.where(visible & (finite > -jnp.inf), ranked, INVALID_KEY))
    return keys, kept


def global_cut(gathered: jnp.ndarray, take: jnp.ndarray) -> jnp.ndarray:
    """The take-th largest key per row of gathered [N, ..., C] int32 (INVALID_KEY when fewer exist).

    take: broadcastable to gathered[0, ..., 0]. Radix search from the top bit over unsigned keys."""
    u = jax.lax.bitcast_convert_type(gathered ^ np.int32(-(2**31)), jnp.uint32)  # order-preserving
    prefix = jnp.zeros(gathered.shape[1:-1], jnp.uint32)
    for bit in range(31, -1, -1):
        candidate = prefix | np.uint32(1 << bit)
        count = (u >= candidate[None, ..., None]).sum(axis=(0, -1))
        prefix = jnp.where(count >= take, candidate, prefix)
    return jax.lax.bitcast_convert_type(prefix, jnp.int32) ^ np.int32(-(2**31))


def local_counts(gathered: jnp.ndarray, take: jnp.ndarray, device: jnp.ndarray) -> jnp.ndarray:
    """How many of device `device`'s sorted keys the global selection takes: [...] int32."""
    th = global_cut(gathered, take)
    above = (gathered > th[None, ..., None]).sum(-1)  # [N, ...]
    ties = jnp.where(th == INVALID_KEY, 0, (gathered == th[None, ..., None]).sum(-1))
    need = take - above.sum(0)
    before = jnp.cumsum(ties, axis=0) - ties
    counts = above + jnp.clip(need - before, 0, ties)
    return jnp.take(counts, device, axis=0)


def sharded_select(scores: jnp.ndarray, query_pos: jnp.ndarray, budget: Budget, k_max: int, n_sink: int,
                   n_window: int, shard: Shard, implementation: str = "auto") -> tuple[jnp.ndarray, jnp.ndarray]:
    """`decode_select` on this device's scores [B, Hs, Tl] -> local slots [B, Hs, k_max] and validity.

    k_max is the global one (of the whole capacity); the device's valid slots are its part of the
    one-device selection (in descending key order, not ascending)."""
    if shard.n_seq == 1:
        return decode_select(scores, query_pos, budget, k_max, n_sink, n_window, implementation)
    tl = scores.shape[-1]
    keys, take = selection_keys(scores, shard.positions(tl), query_pos, budget, k_max, n_sink, n_window)
    c = min(k_max, tl)
    values, indices = jax.lax.top_k(keys, c)  # sorted; equal keys: lower local index first
    gathered = jax.lax.all_gather(values, shard.seq_axis)  # [N, B, Hs, c]
    count = local_counts(gathered, take[:, None], jax.lax.axis_index(shard.seq_axis))  # [B, Hs]
    valid = jnp.arange(c)[None, None, :] < count[..., None]
    pad = ((0, 0), (0, 0), (0, k_max - c))
    return jnp.pad(indices.astype(jnp.int32), pad), jnp.pad(valid, pad)


def global_selection(indices: jnp.ndarray, valid: jnp.ndarray, shard: Shard, local_capacity: int):
    """Every device's part as global positions: [B, Hs, N * K] indices and validity (for checks)."""
    if shard.n_seq == 1:
        return indices, valid
    glob = jnp.where(valid, indices + shard.offset(local_capacity), 0)
    gather = lambda a: jnp.concatenate(list(jax.lax.all_gather(a, shard.seq_axis)), axis=-1)  # noqa: E731
    return gather(glob), gather(valid)
