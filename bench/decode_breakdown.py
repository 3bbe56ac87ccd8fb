"""Per-operation breakdown of one decode step (Llama-3.1-8B shapes, random weights), dispatch amortised.

Each operation is the library's own code (the model's Dense / RMSNorm / MLP modules on a layer's
parameters, `apply_rope`, `write_token`, `butler_jax.decode_attention.dense_attend` /
`sparse_attend` (the Pallas kernels on GPU), and the policies' own `decode_scores`, `select`,
`observe_decode` and `decode_select` (kernels.topk_select)), repeated n times as dependent calls
inside one jitted `lax.fori_loop` with a static trip count (the carry is donated and each call's
input depends on the previous output), timed (best of 3) and divided by the number of calls.

* Weight-reading ops rotate over R layers' parameters, sparse attention over R index sets and
  scoring over R layers' importance keys, so each call reads from HBM as in the real loop (the
  H100's L2 is 50 MB; the O projection alone is 33.5 MB).
* Where an op's output cannot feed its input directly, a tiny "nudge" kernel (one element of the
  output added, x 1e-30, to a small input) makes the calls dependent; its cost is measured alone
  and subtracted ("net"); "raw" keeps it.
* TokenButler (long-context) selects per producer group on prediction steps, as the decode loop
  runs it: the producer's `observe_decode` scores every sparse layer it serves and runs one top-K
  (+ neighbour fetch) on the stacked [B, G*Hkv, T] scores; the consumers' `select` reads that
  selection. The `tb_group*` ops time one group (producer + consumers) per call and report it per
  layer too (/ the layers the group serves); `tb_producer` (the producer's `observe_decode` on a
  reuse step) is subtracted per token, as `tb_predictor` counts it already.
* Per-token figures scale the per-layer ops by the layers that run them (32 for the model,
  31 sparse layers, / predict_interval for predictions), the per-group ops by the producer groups
  (8), and are compared with the end-to-end figures of decode_latency.json (same batch and
  context) and the bandwidth floor.

    python bench/decode_breakdown.py                       # B=1 and 4 at 128K, budget 8192 (GPU)
    python bench/decode_breakdown.py --smoke               # CPU toy shapes

Writes decode_breakdown.json, decode_breakdown.md and decode_breakdown.png to --out.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `bench.*` imports
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.94")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.timing import add_decode_shape_args, read_bandwidth  # noqa: E402
from bench.decode_latency import (DEFAULT_METHODS, Method, Settings, init_predictor,  # noqa: E402
                                  load_settings, log, run_meta, tree_bytes)
from butler_jax.cache import KVCache, write_token  # noqa: E402
from butler_jax.decode_attention import dense_attend, sparse_attend  # noqa: E402
from butler_jax.models.llama import LayerInputs, LlamaForCausalLM, LlamaMLP, RMSNorm, _dense, init_params  # noqa: E402
from butler_jax.models.rope import apply_rope, rope_cos_sin, rope_inv_freq  # noqa: E402
from butler_jax.sampling import SamplingConfig, sample  # noqa: E402
from butler_jax.sparsity import make_policy  # noqa: E402
from butler_jax.sparsity.budget import parse_budget  # noqa: E402
from butler_jax.sparsity.select import decode_select  # noqa: E402
from butler_jax.sparsity.tokenbutler import TokenButlerLongctxPolicy  # noqa: E402

REUSE_INTERVAL = 4  # predict_interval of the measured prediction / reuse select paths (representative of i > 1)
SUM_TOLERANCE = 0.05  # the per-op sum should match end to end within this fraction of end to end


def sum_check(sum_ms: float, e2e_ms: float | None) -> dict:
    """The per-op sum against end to end: gap (e2e - sum) in ms and % of e2e, and whether |gap| <= SUM_TOLERANCE."""
    if e2e_ms is None:
        return dict(gap_ms=None, gap_pct=None, within=None)
    gap = e2e_ms - sum_ms
    return dict(gap_ms=gap, gap_pct=100 * gap / e2e_ms, within=abs(gap) <= SUM_TOLERANCE * e2e_ms)


@dataclasses.dataclass
class Op:
    name: str
    what: str
    per: str  # "layer", "group" (one producer group) or "token"
    floor_bytes: float
    reps: int  # calls per loop iteration
    nudges: int  # nudge kernels per call (their measured cost is subtracted for "net")
    step: Callable  # (carry, *args) -> carry, `reps` calls
    carry: Any
    args: tuple
    informational: bool = False
    layers: float = 1.0  # sparse layers per call ("group" ops: the layers the group serves)


def nudge(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """x plus 1e-30 x the first element of y: a value dependence of x on y at the cost of one tiny kernel."""
    first = y.reshape(-1)[0].astype(jnp.float32)
    return (x.astype(jnp.float32) + first * 1e-30).astype(x.dtype)


def producer_groups(policy: TokenButlerLongctxPolicy) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """(producer layer, the sparse layers it serves) of every producer that serves one or more."""
    return tuple((p, policy.served(p)) for p in policy.adapter.producers if policy.served(p))


def zeros_of(tree):
    """Zeros of the shapes and dtypes of a pytree of arrays or ShapeDtypeStructs."""
    return jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), tree)


def time_op(op: Op, bandwidth: float, target_s: float, n_bounds: tuple[int, int]):
    """Seconds per call (best of 3 timed loops after a compile + warm-up call), iterations, compile s."""
    est = op.floor_bytes / bandwidth + 5e-6
    n = int(np.clip(target_s / (est * op.reps), *n_bounds))
    step = op.step
    run = jax.jit(lambda c, *a: jax.lax.fori_loop(0, n, lambda i, cc: step(cc, *a), c), donate_argnums=0)
    t0 = time.perf_counter()
    carry = jax.block_until_ready(run(op.carry, *op.args))
    compile_s = time.perf_counter() - t0
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        carry = jax.block_until_ready(run(carry, *op.args))
        best = min(best, time.perf_counter() - t0)
    del carry
    return best / (n * op.reps), n, compile_s


class Bench:
    """Buffers and op builders for one batch size and context."""

    def __init__(self, s: Settings, predictor, params, pparams, batch: int, context: int, capacity: int, rot: int):
        self.s, self.cfg, self.predictor = s, s.cfg, predictor
        self.params, self.pparams = params, pparams
        self.batch, self.context, self.capacity, self.rot = batch, context, capacity, rot
        c = self.cfg
        self.dt = jnp.bfloat16 if c.dtype == "bfloat16" else jnp.float32
        self.hq, self.hkv, self.hd, self.d = c.num_attention_heads, c.num_key_value_heads, c.resolved_head_dim, c.hidden_size
        self.layers = c.num_hidden_layers
        self.sparse_layers = [l for l in range(s.dense_layers, self.layers)][:rot] or [0]
        b = batch
        keys = iter(jax.random.split(jax.random.PRNGKey(batch * 7919 + context), 64))
        rnd = lambda shape, dt=self.dt: jax.jit(lambda k: jax.random.normal(k, shape, dt))(next(keys))  # noqa: E731
        self.rnd = rnd
        self.kc = rnd((b, self.hkv, capacity, self.hd))
        self.vc = rnd((b, self.hkv, capacity, self.hd))
        self.lengths = jnp.full((b,), context, jnp.int32)  # the new token's position (= cache.lengths in the loop)
        self.q = rnd((b, 1, self.hq, self.hd))
        self.k_tok = rnd((b, 1, self.hkv, self.hd))
        self.x = rnd((b, 1, self.d))
        self.layer_params = [params[f"layers_{r}"] for r in range(rot)]
        self.all_groups = producer_groups(self.policy("tokenbutler"))
        self.groups = self.all_groups[:rot]  # the producer groups the group ops rotate over

    # --- helpers ---------------------------------------------------------------------------------
    def policy(self, kind: str, interval: int = 1, nf: bool = False, phase: str | None = None):
        """The static policy value, configured as decode_latency's methods (TokenButler: grouped
        selection); its params (the predictor's, or () for Oracle) are passed to each call.
        phase ("predict" / "reuse", predict_interval > 1): the step kind fixed, as the decode loop runs it."""
        m = Method(f"{kind}", kind, interval, nf)
        policy = make_policy(m.sparsity(self.s, interval), self.cfg, (self.predictor, None))[0]
        return dataclasses.replace(policy, phase=phase) if phase else policy

    def tb_policy(self, interval: int, nf: bool) -> TokenButlerLongctxPolicy:
        """TokenButler on a prediction step (the phase fixed when interval > 1)."""
        return self.policy("tokenbutler", interval, nf, "predict" if interval > 1 else None)

    def cache(self, kc=None, vc=None) -> KVCache:
        return KVCache((self.kc if kc is None else kc,), (self.vc if vc is None else vc,), self.lengths)

    def layer_inputs(self, q=None, k=None, residual=None) -> LayerInputs:
        return LayerInputs(q, k, None, None, None, residual)

    def tb_state(self, interval: int, nf: bool, step: int):
        """A TokenButler state with random importance keys/queries at decode step `step`."""
        @jax.jit
        def make(pp, key):
            policy = self.policy("tokenbutler", interval, nf)
            st = policy.init_state(pp, self.batch, self.capacity)
            ks = jax.random.split(key, len(st.cache) + 1)
            cache = tuple(jax.random.normal(k, a.shape, a.dtype) for k, a in zip(ks[1:], st.cache))
            query = jax.random.normal(ks[0], st.query.shape, st.query.dtype)
            return st._replace(cache=cache, query=query, step=jnp.int32(step))

        return make(self.pparams, jax.random.PRNGKey(step + 17 * interval))

    def kv_row(self) -> int:
        return self.hkv * self.hd * self.s.itemsize

    def importance_key_bytes(self) -> int:
        """One layer's cached importance keys [B, Hkv, capacity, d']."""
        return self.batch * self.hkv * self.capacity * self.s.pcfg.dDash * self.s.itemsize

    def group_step(self, policy, pp, producer: int, x: LayerInputs, cache: KVCache, state):
        """One producer group of a decode step: `observe_decode` at `producer` (grouped on a prediction
        step: scores, one top-K, expansion), then `select` at each layer it serves
        -> (state, ((indices, valid) [B, Hkv, slots] per served layer))."""
        state = policy.observe_decode(pp, producer, x, cache, state)
        out = []
        for layer in policy.served(producer):
            idx, ok, state = policy.select(pp, layer, self.layer_inputs(), cache, state)
            out.append((idx, ok))
        return state, tuple(out)

    # --- ops -------------------------------------------------------------------------------------
    def ops(self, bandwidth: float) -> list[Callable[[], Op]]:
        """Builders (called one at a time, so only one op's buffers live at once)."""
        return [self.op_nudge, self.op_norm, self.op_qkv, self.op_rope, self.op_kv_write, self.op_attn_dense,
                self.op_attn_sparse, self.op_attn_sparse_nf, self.op_o_proj, self.op_mlp, self.op_lm_head,
                self.op_oracle_scores, self.op_oracle_select, lambda: self.op_select(jnp.float32),
                lambda: self.op_select(jnp.bfloat16), self.op_tb_predictor, self.op_tb_producer, self.op_tb_scores,
                lambda: self.op_select(jnp.float32, group=True), self.op_nf_expand, lambda: self.op_tb_group(nf=False),
                lambda: self.op_tb_group(nf=True), self.op_tb_select_reuse]

    def op_nudge(self) -> Op:
        def step(q):
            return nudge(q, q)

        return Op("nudge", "the dependence kernel alone (subtracted from ops that need it)", "layer", 0, 1, 0, step,
                  self.q + 0, (), informational=True)

    def op_norm(self) -> Op:
        eps = self.cfg.rms_norm_eps
        weights = tuple(p["input_layernorm"] for p in self.layer_params)

        def step(h, weights):
            for w in weights:
                h = RMSNorm(eps, self.dt).apply({"params": w}, h)
            return h

        return Op("norm", "one RMSNorm (2 per layer; the final one is in lm_head)", "layer",
                  self.d * self.s.itemsize * (1 + 2 * self.batch), len(weights), 0, step, self.x + 0, (weights,))

    def op_qkv(self) -> Op:
        c, dt = self.cfg, self.dt
        weights = tuple({k: p["self_attn"][k] for k in ("q_proj", "k_proj", "v_proj")} for p in self.layer_params)
        direct = self.hq * self.hd == self.d

        def step(carry, weights):
            x, k, v = carry
            for w in weights:
                q = _dense(self.hq * self.hd, "q_proj", dt).apply({"params": w["q_proj"]}, x)
                k = _dense(self.hkv * self.hd, "k_proj", dt).apply({"params": w["k_proj"]}, x)
                v = _dense(self.hkv * self.hd, "v_proj", dt).apply({"params": w["v_proj"]}, x)
                x = q if direct else nudge(x, q)
            return x, k, v

        b = self.batch
        kv0 = jnp.zeros((b, 1, self.hkv * self.hd), dt)
        return Op("qkv", "q, k, v projections (3 Dense)", "layer",
                  c.hidden_size * (self.hq + 2 * self.hkv) * self.hd * self.s.itemsize, len(weights), 0 if direct else 1,
                  step, (self.x + 0, kv0, kv0 + 0), (weights,))

    def op_rope(self) -> Op:
        positions = self.lengths[:, None]  # cos/sin are computed once per step in the model, as here
        cos, sin = rope_cos_sin(positions, rope_inv_freq(self.hd, self.cfg.rope_theta, self.cfg.rope_scaling))

        def step(carry, cos, sin):
            q, k = carry
            return apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        return Op("rope", "apply_rope to q and k", "layer", 2 * self.batch * (self.hq + self.hkv) * self.hd * self.s.itemsize,
                  1, 0, step, (self.q + 0, self.k_tok + 0), (cos, sin))

    def op_kv_write(self) -> Op:
        def step(carry, kt, vt, pos):
            kc, vc = carry
            return write_token(kc, kt, pos), write_token(vc, vt, pos)

        return Op("kv_write", "write_token of the step's K and V into the layer cache", "layer",
                  2 * self.batch * self.kv_row(), 1, 0, step, (self.kc + 0, self.vc + 0),
                  (self.k_tok, self.k_tok + 1, self.lengths))

    def op_attn_dense(self) -> Op:
        impl = "auto"

        def step(q, kc, vc, lengths):
            return dense_attend(q, kc, vc, lengths, impl)

        return Op("attn_dense", f"dense_attend over {self.context + 1} tokens (Pallas on GPU)", "layer",
                  2 * self.batch * (self.context + 1) * self.kv_row(), 1, 0, step, self.q + 0,
                  (self.kc, self.vc, self.lengths + 1))

    def _group_selections(self, interval: int, nf: bool, n_layers: int) -> list[tuple]:
        """The selections ((indices, valid) per served layer) of the first rotated producer groups
        that cover n_layers sparse layers, on a prediction step (random importance keys/queries)."""
        policy = self.tb_policy(interval, nf)
        groups = []
        for producer, served in self.groups:
            groups.append(producer)
            n_layers -= len(served)
            if n_layers <= 0:
                break
        state = self.tb_state(interval, nf, step=1)

        @jax.jit
        def sets(pp, state, kc, vc, k, res):
            out = []
            for producer in groups:
                state, sel = self.group_step(policy, pp, producer, self.layer_inputs(k=k, residual=res),
                                             self.cache(kc, vc), state)
                out.append(sel)
            return out

        return sets(self.pparams, state, self.kc, self.vc, self.k_tok, self.x)

    def _index_sets(self, nf: bool):
        """R index lists as TokenButler's grouped selection produces them (random importance keys):
        i=1 -> budget slots; neighbour fetch (i=4, a prediction step) -> ~2x + the reuse slots."""
        interval = REUSE_INTERVAL if nf else 1
        n = len(self.sparse_layers)
        sel = [s for group in self._group_selections(interval, nf, n) for s in group][:n]
        return tuple(i for i, _ in sel), tuple(o for _, o in sel)

    def _op_sparse(self, name: str, nf: bool) -> Op:
        idx, ok = self._index_sets(nf)
        valid = float(np.mean([float(o.sum()) for o in ok])) / (self.batch * ok[0].shape[1])

        def step(q, kc, vc, idx, ok):
            for i, o in zip(idx, ok):
                q = sparse_attend(q, kc, vc, i, o, "auto")
            return q

        what = f"sparse_attend, {idx[0].shape[-1]} slots ({valid:.0f} valid; K/V gather fused in the kernel)"
        floor = self.batch * self.hkv * (valid * 2 * self.hd * self.s.itemsize + idx[0].shape[-1] * 5)
        return Op(name, what, "layer", floor, len(idx), 0, step, self.q + 0, (self.kc, self.vc, idx, ok))

    def op_attn_sparse(self) -> Op:
        return self._op_sparse("attn_sparse", nf=False)

    def op_attn_sparse_nf(self) -> Op:
        return self._op_sparse("attn_sparse_nf", nf=True)

    def op_o_proj(self) -> Op:
        weights = tuple(p["self_attn"]["o_proj"] for p in self.layer_params)
        direct = self.hq * self.hd == self.d

        def step(x, weights):
            for w in weights:
                y = _dense(self.d, "o_proj", self.dt).apply({"params": w}, x)
                x = y if direct else nudge(x, y)
            return x

        x0 = self.rnd((self.batch, 1, self.hq * self.hd))
        return Op("o_proj", "attention output projection", "layer", self.hq * self.hd * self.d * self.s.itemsize,
                  len(weights), 0 if direct else 1, step, x0, (weights,))

    def op_mlp(self) -> Op:
        weights = tuple(p["mlp"] for p in self.layer_params)

        def step(x, weights):
            for w in weights:
                x = LlamaMLP(self.cfg).apply({"params": w}, x)
            return x

        return Op("mlp", "SwiGLU MLP (gate, up, down)", "layer", 3 * self.d * self.cfg.intermediate_size * self.s.itemsize,
                  len(weights), 0, step, self.x + 0, (weights,))

    def op_lm_head(self) -> Op:
        model = LlamaForCausalLM(dataclasses.replace(self.cfg, num_hidden_layers=len(self.layer_params)))
        keep = ("embed_tokens", "norm", "lm_head")
        head = {k: v for k, v in self.params.items() if k in keep}

        def step(token, head):
            h = model.apply({"params": head}, token, method=lambda m, t: m.norm(m.embed_tokens(t[:, None])[:, 0]))
            logits = model.apply({"params": head}, h, method="logits")
            return sample(logits, jax.random.PRNGKey(0), SamplingConfig())

        n_head = tree_bytes(head["lm_head"]) if "lm_head" in head else tree_bytes(head["embed_tokens"])
        return Op("lm_head", "embedding row + final norm + LM head + greedy sampling", "token", n_head, 1, 0, step,
                  jnp.zeros((self.batch,), jnp.int32), (head,))

    def op_oracle_scores(self) -> Op:
        policy = self.policy("oracle")

        def step(carry, kc, vc):
            q, _ = carry
            scores, _ = policy.decode_scores((), 0, self.layer_inputs(q=q), self.cache(kc, vc), ())
            return nudge(q, scores), scores

        scores0 = jnp.zeros((self.batch, self.hkv, self.capacity), jnp.float32)
        return Op("oracle_scores", "Oracle decode_scores: true attention q.K over the cache, probabilities summed over the group", "layer",
                  self.batch * self.capacity * self.kv_row(), 1, 1, step, (self.q + 0, scores0), (self.kc, self.vc))

    def op_oracle_select(self) -> Op:
        policy = self.policy("oracle")

        def step(carry, kc, vc):
            q, _, _ = carry
            idx, ok, _ = policy.select((), 0, self.layer_inputs(q=q), self.cache(kc, vc), ())
            return nudge(q, idx), idx, ok

        k = policy.k_max(self.capacity)
        z = jnp.zeros((self.batch, self.hkv, k), jnp.int32)
        return Op("oracle_select", "Oracle select: decode_scores + decode_select (the loop's call)", "layer",
                  self.batch * self.capacity * self.kv_row(), 1, 1, step, (self.q + 0, z, z > 0), (self.kc, self.vc))

    def _op_observe(self, name: str, what: str, per: str, layers: tuple[int, ...], served: float, floor: float) -> Op:
        """observe_decode at `layers` on a reuse step (no prediction: key projection + importance-key
        write, importance queries at producers), one call per layer."""
        state = self.tb_state(1, False, step=1)
        policy = self.policy("tokenbutler", REUSE_INTERVAL, False, "reuse")

        def step(carry, pp, lengths):
            st, k, res = carry
            k, res = nudge(k, st.query), nudge(res, st.query)
            cache = KVCache((), (), lengths)
            for layer in layers:
                st = policy.observe_decode(pp, layer, self.layer_inputs(k=k, residual=res), cache, st)
            return st, k, res

        return Op(name, what, per, floor, len(layers), 2 / len(layers), step, (state, self.k_tok + 0, self.x + 0),
                  (self.pparams, self.lengths), layers=served)

    def op_tb_predictor(self) -> Op:
        return self._op_observe("tb_predictor", "observe_decode without a prediction: key projection + importance-key "
                                "write; producer every 4th layer (average over all layers)", "layer",
                                tuple(range(self.layers)), 1, tree_bytes(self.pparams) / self.layers)

    def producer_bytes(self) -> float:
        """Weights one producer's observe_decode reads: its MLP + its layer's key projection."""
        proj = tree_bytes(self.pparams["key_cache_proj"])
        producers = len(self.policy("tokenbutler").adapter.producers)
        return (tree_bytes(self.pparams) - proj) / producers + proj / self.layers

    def group_layers(self) -> float:
        """Sparse layers a rotated producer group serves, on average."""
        return float(np.mean([len(served) for _, served in self.groups]))

    def op_tb_producer(self) -> Op:
        return self._op_observe("tb_producer", "a producer's observe_decode without a prediction (subtracted from "
                                "tb_group*, in tb_predictor already)", "group", tuple(p for p, _ in self.groups),
                                self.group_layers(), self.producer_bytes())

    def op_tb_group(self, nf: bool) -> Op:
        """One producer group of a prediction step per call (i=1, or i=4 + neighbour fetch)."""
        interval = REUSE_INTERVAL if nf else 1
        policy = self.tb_policy(interval, nf)
        state = self.tb_state(interval, nf, step=1)
        groups = tuple(p for p, _ in self.groups)

        def step(carry, pp, kc, vc):
            st, k, res, sel = carry
            for producer in groups:
                k, res = nudge(k, sel[-1][0]), nudge(res, sel[-1][0])
                st, sel = self.group_step(policy, pp, producer, self.layer_inputs(k=k, residual=res), self.cache(kc, vc), st)
            return st, k, res, sel

        last = jax.eval_shape(lambda pp, st, kc, vc: self.group_step(
            policy, pp, groups[-1], self.layer_inputs(k=self.k_tok, residual=self.x), self.cache(kc, vc), st)[1],
            self.pparams, state, self.kc, self.vc)
        g = self.group_layers()
        kind = f"i={interval} + neighbour fetch, prediction step" if nf else "i=1"
        what = (f"one producer group, {kind}: observe_decode at the producer (+ scores of its {g:g} layers, one top-K "
                f"on [B, {g:g}*Hkv, T]{' + expansion' if nf else ''}) + the layers' select")
        floor = self.producer_bytes() + g * self.importance_key_bytes()
        return Op("tb_group_nf" if nf else "tb_group", what, "group", floor, len(groups), 2, step,
                  (state, self.k_tok + 0, self.x + 0, zeros_of(last)), (self.pparams, self.kc, self.vc), layers=g)

    def op_tb_scores(self) -> Op:
        state = self.tb_state(1, False, step=1)
        layers = self.sparse_layers
        policy = self.policy("tokenbutler")

        def step(carry, pp, kc, vc):
            st, _ = carry
            for layer in layers:
                scores, _ = policy.decode_scores(pp, layer, self.layer_inputs(), self.cache(kc, vc), st)
                st = st._replace(query=nudge(st.query, scores))
            return st, scores

        scores0 = jnp.zeros((self.batch, self.hkv, self.capacity), jnp.float32)
        return Op("tb_scores", "TokenButler decode_scores: query . cached importance keys [B, Hkv, T, d'], max over the group",
                  "layer", self.importance_key_bytes(), len(layers), 1, step, (state, scores0), (self.pparams, self.kc, self.vc))

    def op_select(self, dtype, group: bool = False) -> Op:
        """decode_select on one layer's scores [B, Hkv, T], or (group) a producer group's stacked [B, G*Hkv, T]."""
        s = self.s
        budget = parse_budget(str(s.budget))
        k_max = budget.max_kept(self.capacity)  # sinks and window inside the budget
        layers = len(self.groups[0][1]) if group else 1
        rows = self.hkv * layers
        scores = self.rnd((self.batch, rows, self.capacity), jnp.float32).astype(dtype)

        def step(carry, lengths):
            sc, _, _ = carry
            idx, ok = decode_select(sc, lengths, budget, k_max, s.n_sink, s.n_window, "auto")
            return sc.at[:, :, 0].set(idx[:, :, 0].astype(sc.dtype)), idx, ok

        z = jnp.zeros((self.batch, rows, k_max), jnp.int32)
        name = "select_group" if group else "select" if dtype == jnp.float32 else "select_bf16"
        what = f"decode_select (kernels.topk_select) on {jnp.dtype(dtype).name} scores [{self.batch * rows}, {self.capacity}]"
        return Op(name, what, "group" if group else "layer", self.batch * rows * self.capacity * jnp.dtype(dtype).itemsize,
                  1, 1, step, (scores, z, z > 0), (self.lengths,), informational=dtype != jnp.float32, layers=layers)

    def op_nf_expand(self) -> Op:
        """The neighbour-fetch expansion of a producer group's stacked top-K lists [B, G*Hkv, k]."""
        sel = self._group_selections(1, False, 1)[0]
        idx, ok = jnp.concatenate([i for i, _ in sel], 1), jnp.concatenate([o for _, o in sel], 1)
        expand = self.tb_policy(REUSE_INTERVAL, True)._expand  # the neighbour-fetch step of TokenButler's prediction
        cap = self.capacity

        def step(carry, lengths):
            i, o, _, _ = carry
            wide, wok = expand(i, o, lengths, cap)
            return i.at[:, :, 0].set(wide[:, :, 0]), o, wide, wok

        k2 = min(2 * idx.shape[-1], cap)
        z = jnp.zeros((self.batch, idx.shape[1], k2), jnp.int32)
        return Op("nf_expand_group", f"neighbour-fetch expansion of a group's stacked top-K lists [{self.batch * idx.shape[1]}, "
                  f"{idx.shape[-1]}] (policy._expand)", "group", self.batch * idx.shape[1] * 3 * k2 * 5, 1, 1, step,
                  (idx, ok, z, z > 0), (self.lengths,), layers=len(sel))

    def op_tb_select_reuse(self) -> Op:
        """A consumer layer's select on a reuse step (i=4 + neighbour fetch): the previous list + the new tokens."""
        i = REUSE_INTERVAL
        state = self.tb_state(i, True, step=2)
        policy = self.policy("tokenbutler", i, True, "reuse")
        slots = policy.k_select(self.capacity) + i
        layers = self.sparse_layers

        def step(carry, pp, kc, vc):
            st, _, _ = carry
            for layer in layers:
                idx, ok, st = policy.select(pp, layer, self.layer_inputs(), self.cache(kc, vc), st)
                st = st._replace(query=nudge(st.query, idx))
            return st, idx, ok

        z = jnp.zeros((self.batch, self.hkv, slots), jnp.int32)
        return Op("tb_select_nf_reuse", f"TokenButler select, i={i} + neighbour fetch, reuse step (the loop's reuse "
                  "branch: previous list + new tokens)", "layer", 0, len(layers), 1, step, (state, z, z > 0),
                  (self.pparams, self.kc, self.vc))


# --- per-token composition ---------------------------------------------------------------------
def compose(us: dict[str, float], s: Settings, m: Method, groups: tuple[int, ...], timed: float
            ) -> tuple[dict[str, float], list[str]]:
    """ms/token by group for a method from per-call op times (us); notes on approximations.
    groups: the sparse layers each of the model's producer groups serves; timed: per timed group, on average."""
    L = s.cfg.num_hidden_layers
    d = L if m.kind == "dense" else min(s.dense_layers, L)
    S = L - d
    g: dict[str, float] = {}
    notes: list[str] = []
    get = lambda name: us.get(name, float("nan"))  # noqa: E731
    g["norms"] = 2 * L * get("norm")
    g["QKV proj"] = L * get("qkv")
    g["RoPE"] = L * get("rope")
    g["KV write"] = L * get("kv_write")
    g["O proj"] = L * get("o_proj")
    g["MLP"] = L * get("mlp")
    g["LM head + sampling"] = get("lm_head")
    g["attention (dense)"] = d * get("attn_dense")
    if m.kind == "oracle":
        g["attention (sparse)"] = S * get("attn_sparse")
        g["scoring"] = S * get("oracle_scores")
        g["selection (top-K)"] = S * get("select")
        g["select: other"] = S * get("oracle_select") - g["scoring"] - g["selection (top-K)"]
    elif m.kind == "tokenbutler":
        g["attention (sparse)"] = S * get("attn_sparse_nf" if m.neighbor_fetch else "attn_sparse")
        g["predictor"] = L * get("tb_predictor")
        notes += tokenbutler_selection(g, get, m, S, groups, timed)
    return {k: v / 1e3 for k, v in g.items()}, notes


def tokenbutler_selection(g: dict[str, float], get: Callable[[str], float], m: Method, S: int, groups: tuple[int, ...],
                          timed: float) -> list[str]:
    """Add TokenButler's selection (us/token) to g: on a prediction step (1 / interval of the steps) each
    producer group's grouped prediction (tb_group* - tb_producer, whose observe_decode the predictor
    counts), on the others each sparse layer's reuse select; scoring / top-K / expansion split out of it.
    Returns the notes on the stand-ins."""
    n, nf, P = m.interval, m.neighbor_fetch, len(groups)
    notes = []
    predict = P * (get("tb_group_nf" if nf else "tb_group") - get("tb_producer"))
    whole = predict / n + S * (1 - 1 / n) * get("tb_select_nf_reuse")
    g["scoring"] = S / n * get("tb_scores")
    g["selection (top-K)"] = P / n * get("select_group")
    g["neighbour expansion"] = P / n * get("nf_expand_group") if nf else 0.0
    g["select: other"] = whole - g["scoring"] - g["selection (top-K)"] - g["neighbour expansion"]
    if nf and n == 1:
        notes.append(f"i=1 with neighbour fetch: the i={REUSE_INTERVAL} prediction-step group stands in")
    elif nf and n != REUSE_INTERVAL:
        notes.append(f"select measured at i={REUSE_INTERVAL} (the reuse slots differ by {n - REUSE_INTERVAL})")
    elif not nf and n > 1:
        notes.append("no-nf i>1: the i=1 group + the nf reuse step stand in")
    if not math.isclose(timed * P, sum(groups)):
        notes.append(f"per-group ops timed on groups of {timed:g} layers; the {P} producer groups serve {list(groups)}")
    return notes


def load_e2e(path: str | None, out: Path) -> dict:
    candidates = [Path(path)] if path else [out / "decode_latency.json", Path("bench/results/decode_latency.json"),
                                            Path("bench/results/decode_latency_h100.json")]
    for p in candidates:
        if p.is_file():
            rows = json.loads(p.read_text())["rows"]
            log(f"end-to-end figures from {p}")
            return {(r["method"], r["batch"], r["context"]): r for r in rows
                    if r.get("status", "ok") == "ok" and "ms_per_token" in r} | {"_path": str(p)}
    return {}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/llama-3.1-8b.yaml")
    ap.add_argument("--contexts", default="131072", help="comma-separated contexts")
    ap.add_argument("--batch", default="1,4")
    add_decode_shape_args(ap)
    ap.add_argument("--steps", type=int, default=17, help="only sets the cache capacity, context + steps + 1, as decode_latency")
    ap.add_argument("--methods", default=DEFAULT_METHODS, help="methods composed per token (as decode_latency)")
    ap.add_argument("--rotate", type=int, default=4, help="layers / index sets rotated per loop iteration (L2 is 50 MB)")
    ap.add_argument("--target-ms", type=float, default=25.0, help="aimed duration of one timed loop")
    ap.add_argument("--e2e", default=None, help="decode_latency.json to compare with (default: --out's, then bench/results/)")
    ap.add_argument("--ops", default="", help="comma-separated subset of ops (default: all)")
    ap.add_argument("--bandwidth-tbps", type=float, default=None)
    ap.add_argument("--smoke", action="store_true", help="CPU toy run: tiny config, context 512, budget 64")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    if ap.parse_known_args(argv)[0].smoke:  # toy defaults; options given explicitly still win
        ap.set_defaults(config="configs/tiny.yaml", contexts="512", batch="1,2", budget=64, n_sink=4, n_window=16,
                        d_dash=8, intdim=32, steps=3, rotate=2, target_ms=1.0, bandwidth_tbps=0.01)
    args = ap.parse_args(argv)
    args.n_bounds = (2, 3) if args.smoke else (3, 1000)
    return args


def setup(args) -> tuple[Settings, Any, dict, dict, int]:
    """(settings, predictor module, random params of the R rotated layers, random predictor params, R)."""
    s, _, predictor = load_settings(args)
    rot = max(1, min(args.rotate, s.cfg.num_hidden_layers))
    params = jax.jit(lambda: init_params(dataclasses.replace(s.cfg, num_hidden_layers=rot)))()
    return s, predictor, params, init_predictor(s, predictor), rot


def main(argv=None) -> None:
    args = parse_args(argv)
    s, predictor, params, pparams, rot = setup(args)
    cfg = s.cfg
    out = Path(args.out)
    methods = [Method.parse(x) for x in args.methods.split(",") if x.strip()]
    bandwidth = args.bandwidth_tbps * 1e12 if args.bandwidth_tbps else read_bandwidth()
    log(f"device {jax.devices()[0].device_kind}; read bandwidth {bandwidth / 1e12:.2f} TB/s; {rot} layers' weights rotated")
    full_params = jax.eval_shape(lambda: init_params(cfg))
    weights = tree_bytes(full_params) - (0 if cfg.tie_word_embeddings else tree_bytes(full_params["embed_tokens"]))
    e2e = load_e2e(args.e2e, out)
    wanted = {x.strip() for x in args.ops.split(",") if x.strip()}
    results, totals = [], []
    for batch in map(int, args.batch.split(",")):
        for context in map(int, args.contexts.split(",")):
            capacity = context + args.steps + 1
            log(f"== B={batch} ctx={context} (capacity {capacity})")
            bench = Bench(s, predictor, params, pparams, batch, context, capacity, rot)
            us_raw, us_net, nudge_us = {}, {}, 0.0
            for build in bench.ops(bandwidth):
                try:
                    op = build()
                except Exception as e:  # noqa: BLE001
                    log(f"  build failed: {type(e).__name__}: {str(e)[:300]}")
                    continue
                if wanted and op.name not in wanted and op.name != "nudge":
                    continue
                try:
                    sec, n, compile_s = time_op(op, bandwidth, args.target_ms / 1e3, args.n_bounds)
                except Exception as e:  # noqa: BLE001 - one failing op must not stop the others
                    log(f"  {op.name}: FAILED {type(e).__name__}: {str(e)[:300]}")
                    continue
                finally:
                    op.carry = op.args = None
                    gc.collect()
                raw = sec * 1e6
                if op.name == "nudge":
                    nudge_us = raw
                net = max(0.0, raw - op.nudges * nudge_us) if op.name != "nudge" else raw
                us_raw[op.name], us_net[op.name] = raw, net
                floor_us = op.floor_bytes / bandwidth * 1e6
                results.append(dict(batch=batch, context=context, op=op.name, what=op.what, per=op.per, us_raw=raw,
                                    us_net=net, layers=op.layers, us_net_per_layer=net / op.layers, floor_us=floor_us,
                                    floor_bytes=op.floor_bytes, iterations=n,
                                    calls_per_iteration=op.reps, nudges=op.nudges, compile_s=compile_s,
                                    informational=op.informational))
                per_layer = f" ({net / op.layers:.2f} per layer)" if op.per == "group" else ""
                log(f"  {op.name:22s} {raw:9.2f} us raw {net:9.2f} net{per_layer}  floor {floor_us:8.2f} us  "
                    f"(n={n} x {op.reps}, compile {compile_s:.1f}s)")
            group_sizes, timed = tuple(len(served) for _, served in bench.all_groups), bench.group_layers()
            del bench
            gc.collect()
            for m in methods:
                groups, notes = compose(us_net, s, m, group_sizes, timed)
                total = sum(groups.values())
                floor = s.read_bytes(m, batch, context, weights, tree_bytes(pparams))["total"] / bandwidth * 1e3
                e = e2e.get((m.label, batch, context))
                e2e_ms = e["ms_per_token"] if e else None
                check = sum_check(total, e2e_ms)
                totals.append(dict(method=m.label, batch=batch, context=context, groups_ms=groups, sum_ms=total,
                                   e2e_ms=e2e_ms, floor_ms=floor, notes=notes, **check))
                verdict = ("no end-to-end figure" if e2e_ms is None else
                           f"end to end {e2e_ms:.2f}, gap {check['gap_ms']:+.2f} ms ({check['gap_pct']:+.1f} %: "
                           f"{'within' if check['within'] else 'OUTSIDE'} {100 * SUM_TOLERANCE:.0f} %)")
                log(f"  {m.label:20s} sum of ops {total:7.2f} ms/token, {verdict}, floor {floor:.2f}")
            # per (batch, context): a cut-short run keeps its figures
            write_outputs(args, s, rot, len(group_sizes), bandwidth, e2e, results, totals)


def write_outputs(args, s: Settings, rot: int, n_groups: int, bandwidth: float, e2e: dict, results: list,
                  totals: list) -> None:
    """decode_breakdown.json / .md / .png under --out from the groups measured so far."""
    out = Path(args.out)
    meta = run_meta(args, bandwidth)
    data = dict(meta=meta, settings=dict(config=args.config, budget=args.budget, n_sink=args.n_sink, n_window=args.n_window,
                                         rotate=rot, target_ms=args.target_ms, reuse_interval=REUSE_INTERVAL,
                                         producer_groups=n_groups, e2e=e2e.get("_path")),
                ops=results, totals=totals)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode_breakdown.json").write_text(json.dumps(data, indent=1))
    text = markdown(data, s)
    (out / "decode_breakdown.md").write_text(text)
    print(text, flush=True)
    try:
        from bench.plot_decode import plot_breakdown

        plot_breakdown(data, out / "decode_breakdown.png", title=f"{Path(args.config).stem}, {meta['device']}, budget {args.budget}")
        log(f"wrote {out / 'decode_breakdown.png'}")
    except Exception as e:  # noqa: BLE001
        log(f"plot skipped: {type(e).__name__}: {e} (redo: python bench/plot_decode.py --breakdown {out / 'decode_breakdown.json'})")
    log(f"wrote {out / 'decode_breakdown.json'} and {out / 'decode_breakdown.md'}")


def markdown(data: dict, s: Settings) -> str:
    meta, st = data["meta"], data["settings"]
    L = s.cfg.num_hidden_layers
    lines = [f"# Decode-step breakdown by operation, {Path(st['config']).stem} shapes, {meta['device']}", "",
             f"- Command: `{meta['command']}`", f"- jax {meta['jax']}, {meta['date']}, commit {meta['commit']}",
             f"- Each op: the library's code in a jitted `lax.fori_loop` of dependent calls (static trip count, carry donated), "
             f"best of 3 loops of ~{st['target_ms']:.0f} ms / calls. Weights, index sets and importance keys rotate over "
             f"{st['rotate']} layers. \"net\" subtracts the measured dependence (\"nudge\") kernel. Floor = bytes the op must "
             f"read / read-only bandwidth ({meta['bandwidth_TBps']:.2f} TB/s). Budget {st['budget']} ({st['n_sink']} sinks + "
             f"{st['n_window']} recent), per-KV-head selection, {L} layers, layer 0 dense.", ""]
    for batch, context in dict.fromkeys((r["batch"], r["context"]) for r in data["ops"]):
        lines += [f"## Batch {batch}, context {context}", "",
                  "| op | what | per | us raw | us net | us net / layer | floor us | floor / net |",
                  "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in data["ops"]:
            if (r["batch"], r["context"]) != (batch, context):
                continue
            eff = f"{100 * r['floor_us'] / r['us_net']:.0f}%" if r["us_net"] > 0 and r["floor_us"] > 0 else "-"
            per_layer = f"{r['us_net_per_layer']:.2f}" if r["per"] != "token" else "-"
            lines.append(f"| {r['op']}{' (info)' if r['informational'] else ''} | {r['what']} | {r['per']} | "
                         f"{r['us_raw']:.2f} | {r['us_net']:.2f} | {per_layer} | {r['floor_us']:.2f} | {eff} |")
        tot = [t for t in data["totals"] if (t["batch"], t["context"]) == (batch, context)]
        if tot:
            groups = list(dict.fromkeys(g for t in tot for g in t["groups_ms"]))
            lines += ["", f"Per token (ms; per-layer ops x {L} layers, or x {L - s.dense_layers} sparse layers, per-group ops x "
                      f"{st['producer_groups']} producer groups [/ predict_interval]):", "",
                      "| group | " + " | ".join(t["method"] for t in tot) + " |", "|---|" + "---:|" * len(tot)]
            for g in groups:
                lines.append(f"| {g} | " + " | ".join(f"{t['groups_ms'].get(g, 0.0):.3f}" for t in tot) + " |")
            lines.append("| **sum of ops** | " + " | ".join(f"**{t['sum_ms']:.2f}**" for t in tot) + " |")
            lines.append("| end to end (decode_latency) | " + " | ".join(
                f"{t['e2e_ms']:.2f}" if t["e2e_ms"] is not None else "-" for t in tot) + " |")
            lines.append("| end to end - sum | " + " | ".join(
                f"{t['gap_ms']:+.2f}" if t["e2e_ms"] is not None else "-" for t in tot) + " |")
            lines.append("| gap, % of end to end | " + " | ".join(
                f"{t['gap_pct']:+.1f} %" if t["e2e_ms"] is not None else "-" for t in tot) + " |")
            lines.append(f"| sum within {100 * SUM_TOLERANCE:.0f} % of end to end | " + " | ".join(
                ("yes" if t["within"] else "**no**") if t["e2e_ms"] is not None else "-" for t in tot) + " |")
            lines.append("| bandwidth floor | " + " | ".join(f"{t['floor_ms']:.2f}" for t in tot) + " |")
            notes = sorted({f"{t['method']}: {n}" for t in tot for n in t["notes"]})
            if notes:
                lines += [""] + [f"- {n}" for n in notes]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
