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
* Per-token figures scale the per-layer ops by the layers that run them (32 for the model,
  31 sparse layers, / predict_interval for predictions) and are compared with the end-to-end
  figures of decode_latency.json (same batch and context) and the bandwidth floor.

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
    per: str  # "layer" or "token"
    floor_bytes: float
    reps: int  # calls per loop iteration
    nudges: int  # nudge kernels per call (their measured cost is subtracted for "net")
    step: Callable  # (carry, *args) -> carry, `reps` calls
    carry: Any
    args: tuple
    informational: bool = False


def nudge(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """x plus 1e-30 x the first element of y: a value dependence of x on y at the cost of one tiny kernel."""
    first = y.reshape(-1)[0].astype(jnp.float32)
    return (x.astype(jnp.float32) + first * 1e-30).astype(x.dtype)


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

    # --- helpers ---------------------------------------------------------------------------------
    def policy(self, kind: str, interval: int = 1, nf: bool = False, phase: str | None = None):
        """The static policy value; its params (the predictor's, or () for Oracle) are passed to each call.
        phase ("predict" / "reuse", predict_interval > 1): the step kind fixed, as the decode loop runs it.
        TokenButler long-context runs its per-layer selection here (the ops call `select` without the
        producer's `observe_decode`, which the grouped selection needs), so `select` is timed per layer."""
        m = Method(f"{kind}", kind, interval, nf)
        policy = make_policy(m.sparsity(self.s, interval), self.cfg, (self.predictor, None))[0]
        if isinstance(policy, TokenButlerLongctxPolicy):
            policy = dataclasses.replace(policy, group_selection=False)
        return dataclasses.replace(policy, phase=phase) if phase else policy

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

    # --- ops -------------------------------------------------------------------------------------
    def ops(self, bandwidth: float) -> list[Callable[[], Op | None]]:
        """Builders (called one at a time, so only one op's buffers live at once)."""
        return [self.op_nudge, self.op_norm, self.op_qkv, self.op_rope, self.op_kv_write, self.op_attn_dense,
                self.op_attn_sparse, self.op_attn_sparse_nf, self.op_o_proj, self.op_mlp, self.op_lm_head,
                self.op_oracle_scores, self.op_oracle_select, self.op_tb_predictor, self.op_tb_scores,
                lambda: self.op_select(jnp.float32), lambda: self.op_select(jnp.bfloat16), self.op_nf_expand,
                self.op_tb_select_i1, lambda: self.op_tb_select_nf(predict=True), lambda: self.op_tb_select_nf(predict=False)]

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

    def _index_sets(self, nf: bool):
        """R index lists as TokenButler's own select produces them (random importance keys):
        i=1 -> budget slots; neighbour fetch (i=4, a prediction step) -> ~2x + the reuse slots."""
        interval = REUSE_INTERVAL if nf else 1
        state = self.tb_state(interval, nf, step=1)

        @jax.jit
        def sets(pp, state, kc, vc):
            policy = self.policy("tokenbutler", interval, nf, "predict" if interval > 1 else None)
            out = []
            for layer in self.sparse_layers:
                idx, ok, _ = policy.select(pp, layer, self.layer_inputs(), self.cache(kc, vc), state)
                out.append((idx, ok))
            return tuple(out)

        result = sets(self.pparams, state, self.kc, self.vc)
        del state
        return tuple(r[0] for r in result), tuple(r[1] for r in result)

    def _op_sparse(self, name: str, nf: bool) -> Op | None:
        try:
            idx, ok = self._index_sets(nf)
        except Exception as e:  # noqa: BLE001 - neighbour fetch not implemented yet
            log(f"skip {name}: {type(e).__name__}: {str(e)[:200]}")
            return None
        valid = float(np.mean([float(o.sum()) for o in ok])) / (self.batch * ok[0].shape[1])

        def step(q, kc, vc, idx, ok):
            for i, o in zip(idx, ok):
                q = sparse_attend(q, kc, vc, i, o, "auto")
            return q

        what = f"sparse_attend, {idx[0].shape[-1]} slots ({valid:.0f} valid; K/V gather fused in the kernel)"
        floor = self.batch * self.hkv * (valid * 2 * self.hd * self.s.itemsize + idx[0].shape[-1] * 5)
        return Op(name, what, "layer", floor, len(idx), 0, step, self.q + 0, (self.kc, self.vc, idx, ok))

    def op_attn_sparse(self):
        return self._op_sparse("attn_sparse", nf=False)

    def op_attn_sparse_nf(self):
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

    def op_tb_predictor(self) -> Op:
        state = self.tb_state(1, False, step=1)
        n_layers = self.layers
        residual = self.x + 0

        def step(carry, pp, lengths):
            st, k, res = carry
            policy = self.policy("tokenbutler", 1, False)
            k, res = nudge(k, st.query), nudge(res, st.query)
            cache = KVCache((), (), lengths)
            for layer in range(n_layers):
                st = policy.observe_decode(pp, layer, self.layer_inputs(k=k, residual=res), cache, st)
            return st, k, res

        per_layer = tree_bytes(self.pparams) / n_layers
        return Op("tb_predictor", "observe_decode: key projection + importance-key write; producer every 4th layer "
                  "(average over all layers)", "layer", per_layer, n_layers, 2 / n_layers, step,
                  (state, self.k_tok + 0, residual), (self.pparams, self.lengths))

    def op_tb_scores(self) -> Op:
        state = self.tb_state(1, False, step=1)
        layers = self.sparse_layers

        def step(carry, pp, kc, vc):
            st, _ = carry
            policy = self.policy("tokenbutler", 1, False)
            for layer in layers:
                scores, _ = policy.decode_scores(pp, layer, self.layer_inputs(), self.cache(kc, vc), st)
                st = st._replace(query=nudge(st.query, scores))
            return st, scores

        scores0 = jnp.zeros((self.batch, self.hkv, self.capacity), jnp.float32)
        return Op("tb_scores", "TokenButler decode_scores: query . cached importance keys [B, Hkv, T, d'], max over the group",
                  "layer", self.batch * self.hkv * self.capacity * self.s.pcfg.dDash * self.s.itemsize, len(layers), 1,
                  step, (state, scores0), (self.pparams, self.kc, self.vc))

    def op_select(self, dtype) -> Op:
        s = self.s
        budget = parse_budget(str(s.budget))
        k_max = budget.max_kept(self.capacity)  # sinks and window inside the budget
        scores = self.rnd((self.batch, self.hkv, self.capacity), jnp.float32).astype(dtype)

        def step(carry, lengths):
            sc, _, _ = carry
            idx, ok = decode_select(sc, lengths, budget, k_max, s.n_sink, s.n_window, "auto")
            return sc.at[:, :, 0].set(idx[:, :, 0].astype(sc.dtype)), idx, ok

        z = jnp.zeros((self.batch, self.hkv, k_max), jnp.int32)
        name = "select" if dtype == jnp.float32 else "select_bf16"
        return Op(name, f"decode_select (kernels.topk_select) on {jnp.dtype(dtype).name} scores [{self.batch * self.hkv}, {self.capacity}]",
                  "layer", self.batch * self.hkv * self.capacity * jnp.dtype(dtype).itemsize, 1, 1, step,
                  (scores, z, z > 0), (self.lengths,), informational=dtype != jnp.float32)

    def op_nf_expand(self) -> Op | None:
        try:
            idx, ok = self._index_sets(False)
            policy = self.policy("tokenbutler", REUSE_INTERVAL, True, "predict")
            expand = policy._expand  # the neighbour-fetch step of TokenButler's prediction
        except Exception as e:  # noqa: BLE001 - not implemented yet / renamed
            log(f"skip nf_expand: {type(e).__name__}: {str(e)[:200]}")
            return None
        cap = self.capacity

        def step(carry, lengths):
            i, o, _, _ = carry
            wide, wok = expand(i, o, lengths, cap)
            return i.at[:, :, 0].set(wide[:, :, 0]), o, wide, wok

        k2 = min(2 * idx[0].shape[-1], cap)
        z = jnp.zeros((self.batch, self.hkv, k2), jnp.int32)
        return Op("nf_expand", "neighbour-fetch expansion of a prediction's index list (policy._expand)", "layer",
                  self.batch * self.hkv * 3 * k2 * 5, 1, 1, step, (idx[0], ok[0], z, z > 0), (self.lengths,))

    def _op_tb_select(self, name: str, what: str, interval: int, nf: bool, step_no: int, floor: float) -> Op | None:
        phase = None if interval == 1 else ("predict" if (step_no - 1) % interval == 0 else "reuse")
        try:
            state = self.tb_state(interval, nf, step=step_no)
            k = self.policy("tokenbutler", interval, nf, phase)
        except Exception as e:  # noqa: BLE001
            log(f"skip {name}: {type(e).__name__}: {str(e)[:200]}")
            return None
        slots = k.k_select(self.capacity) if hasattr(k, "k_select") else k.k_max(self.capacity)
        slots += interval if interval > 1 else 0
        layers = self.sparse_layers

        def step(carry, pp, kc, vc):
            st, _, _ = carry
            policy = self.policy("tokenbutler", interval, nf, phase)
            for layer in layers:
                idx, ok, st = policy.select(pp, layer, self.layer_inputs(), self.cache(kc, vc), st)
                st = st._replace(query=nudge(st.query, idx))
            return st, idx, ok

        z = jnp.zeros((self.batch, self.hkv, slots), jnp.int32)
        return Op(name, what, "layer", floor, len(layers), 1, step, (state, z, z > 0), (self.pparams, self.kc, self.vc))

    def op_tb_select_i1(self):
        return self._op_tb_select("tb_select_i1", "TokenButler select, i=1: decode_scores + decode_select (the loop's call)",
                                  1, False, 1, self.batch * self.hkv * self.capacity * self.s.pcfg.dDash * self.s.itemsize)

    def op_tb_select_nf(self, predict: bool):
        i = REUSE_INTERVAL
        if predict:
            return self._op_tb_select("tb_select_nf_predict", f"TokenButler select, i={i} + neighbour fetch, prediction step "
                                      "(the loop's prediction branch: scores + top-K + expansion; + reuse slots)", i, True, 1,
                                      self.batch * self.hkv * self.capacity * self.s.pcfg.dDash * self.s.itemsize)
        return self._op_tb_select("tb_select_nf_reuse", f"TokenButler select, i={i} + neighbour fetch, reuse step "
                                  "(the loop's reuse branch: previous list + new tokens)", i, True, 2, 0)


# --- per-token composition ---------------------------------------------------------------------
def compose(us: dict[str, float], s: Settings, m: Method) -> tuple[dict[str, float], list[str]]:
    """ms/token by group for a method from per-call op times (us); notes on approximations."""
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
        n = m.interval
        nf = m.neighbor_fetch
        g["attention (sparse)"] = S * get("attn_sparse_nf" if nf else "attn_sparse")
        g["predictor"] = L * get("tb_predictor")
        g["scoring"] = S / n * get("tb_scores")
        g["selection (top-K)"] = S / n * get("select")
        g["neighbour expansion"] = S / n * get("nf_expand") if nf else 0.0
        if n == 1 and not nf:
            whole = S * get("tb_select_i1")
        elif nf:
            whole = S * (get("tb_select_nf_predict") / n + (1 - 1 / n) * get("tb_select_nf_reuse"))
            if n == 1:
                notes.append("i=1 with neighbour fetch: the i=4 prediction-step select stands in")
            elif n != REUSE_INTERVAL:
                notes.append(f"select measured at i={REUSE_INTERVAL} (the reuse slots differ by {n - REUSE_INTERVAL})")
        else:
            whole = S * (get("tb_select_i1") / n + (1 - 1 / n) * get("tb_select_nf_reuse"))
            notes.append("no-nf i>1: i=1 select + the nf reuse step stand in")
        g["select: other"] = whole - g["scoring"] - g["selection (top-K)"] - g["neighbour expansion"]
    return {k: v / 1e3 for k, v in g.items()}, notes


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


def main(argv=None) -> None:
    args = parse_args(argv)
    s, _, predictor = load_settings(args)
    cfg = s.cfg
    out = Path(args.out)
    methods = [Method.parse(x) for x in args.methods.split(",") if x.strip()]
    rot = max(1, min(args.rotate, cfg.num_hidden_layers))
    cfg_r = dataclasses.replace(cfg, num_hidden_layers=rot)
    params = jax.jit(lambda: init_params(cfg_r))()
    pparams = init_predictor(s, predictor)
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
                if op is None or (wanted and op.name not in wanted and op.name != "nudge"):
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
                                    us_net=net, floor_us=floor_us, floor_bytes=op.floor_bytes, iterations=n,
                                    calls_per_iteration=op.reps, nudges=op.nudges, compile_s=compile_s,
                                    informational=op.informational))
                log(f"  {op.name:22s} {raw:9.2f} us raw {net:9.2f} net  floor {floor_us:8.2f} us  "
                    f"(n={n} x {op.reps}, compile {compile_s:.1f}s)")
            del bench
            gc.collect()
            for m in methods:
                groups, notes = compose(us_net, s, m)
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
            write_outputs(args, s, rot, bandwidth, e2e, results, totals)  # per group: a cut-short run keeps its figures


def write_outputs(args, s: Settings, rot: int, bandwidth: float, e2e: dict, results: list, totals: list) -> None:
    """decode_breakdown.json / .md / .png under --out from the groups measured so far."""
    out = Path(args.out)
    meta = run_meta(args, bandwidth)
    data = dict(meta=meta, settings=dict(config=args.config, budget=args.budget, n_sink=args.n_sink, n_window=args.n_window,
                                         rotate=rot, target_ms=args.target_ms, reuse_interval=REUSE_INTERVAL,
                                         e2e=e2e.get("_path")),
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
                  "| op | what | per | us raw | us net | floor us | floor / net |", "|---|---|---|---:|---:|---:|---:|"]
        for r in data["ops"]:
            if (r["batch"], r["context"]) != (batch, context):
                continue
            eff = f"{100 * r['floor_us'] / r['us_net']:.0f}%" if r["us_net"] > 0 and r["floor_us"] > 0 else "-"
            lines.append(f"| {r['op']}{' (info)' if r['informational'] else ''} | {r['what']} | {r['per']} | "
                         f"{r['us_raw']:.2f} | {r['us_net']:.2f} | {r['floor_us']:.2f} | {eff} |")
        tot = [t for t in data["totals"] if (t["batch"], t["context"]) == (batch, context)]
        if tot:
            groups = list(dict.fromkeys(g for t in tot for g in t["groups_ms"]))
            lines += ["", f"Per token (ms; per-layer ops x {L} layers, or x {L - s.dense_layers} sparse layers [/ predict_interval]):", "",
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
