"""End-to-end decode latency: ms/token of the whole jitted generation loop, dense vs sparse policies.

Llama-3.1-8B shapes with random weights (speed does not depend on values); the KV cache is filled
with random keys/values up to the context length (no prefill), and so are TokenButler's cached
importance keys (all-zero keys would make every past score tie, which sends the exact top-K to its
radix fallback at every step; under --mesh the sharded loop makes its own state, whose keys are
zero), then `decode_loop` generates `--steps` tokens greedily in one `lax.while_loop` (one jitted
call; the cache and the importance keys are donated). The
first call compiles and warms up; the next `--repeats` calls are timed and the best is divided by
steps - 1 (the tokens the loop generates).

Beside each figure: the bandwidth floor = bytes that must be read per token / measured read-only
bandwidth (`bench.timing.read_bandwidth`; decoding mostly reads). Bytes: the weights read per token (all parameters but an untied input-embedding table;
+ the predictor's for TokenButler), the K/V rows attention reads (all in-length rows on dense
layers; the selected rows on sparse layers: the budget, ~2x its scored part with neighbour fetch),
the Oracle's scoring read of every cached key, and TokenButler's importance keys ([B, Hkv, T, d']
per sparse layer, once per prediction, i.e. / predict_interval).

Methods: `dense`, `oracle`, `tokenbutler_i<N>` (long-context producer predictor, predict_interval
N) and `tokenbutler_i<N>_nf` (the same with neighbour fetch). Combinations whose device memory
estimate does not fit are skipped with the reason printed. Before timing a (batch, context) group,
all its methods are compiled in parallel threads (nothing runs on the device meanwhile).

`--profile`: after a method's timing, one more generation call is traced with jax.profiler and
reported per generated token: the GPU kernels' summed time, the call's device span (the "XLA
Modules" line where the trace has it, else first kernel start to last kernel end), the gap =
span - kernel time (idle, launch and control-flow time), the kernel families (by name substring,
`kernel_family`) and the top kernels with their launches per token. Tracing adds some overhead
per launch, so the span may exceed the timed ms/token. Written to decode_profile.json / .md and,
when the trace has GPU kernels, decode_profile.png (`plot_decode.plot_profile`).

    python bench/decode_latency.py                     # the full matrix (defaults), H100 80 GB
    python bench/decode_latency.py --dry-run           # print the plan: estimates, floors, skips
    python bench/decode_latency.py --smoke             # CPU toy shapes (configs/tiny.yaml)
    python bench/decode_latency.py --mesh seq=2        # sharded decode on a mesh (or the config's mesh: section)
    python bench/decode_latency.py --contexts 131072 --batch 1 --methods dense,tokenbutler_i1 --profile
    python bench/decode_latency.py --smoke --profile   # CPU: the profile files say there is no GPU

Writes decode_latency.json, decode_latency.md and decode_latency.png to --out (with --profile also
decode_profile.json, decode_profile.md and, from a GPU trace, decode_profile.png).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `bench.*` imports

# The 8B weights + a 64K x B=4 cache need more than the default 75 % preallocation (set before jax).
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.94")

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from typing import NamedTuple  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.timing import DeviceTimes, add_decode_shape_args, copy_bandwidth, device_times, read_bandwidth  # noqa: E402
from bench.plot_decode import context_label, plot_latency, plot_profile  # noqa: E402
from butler_jax.cache import KVCache  # noqa: E402
from butler_jax.config import ModelConfig, PredictorConfig, load_yaml, section  # noqa: E402
from butler_jax.decode import decode_loop  # noqa: E402
from butler_jax.models.llama import LlamaForCausalLM, init_params  # noqa: E402
from butler_jax.models.predictor_longctx import LongctxPredictor  # noqa: E402
from butler_jax.sampling import SamplingConfig  # noqa: E402
from butler_jax.sharding.decode import decode_loop_on_mesh, local_capacity  # noqa: E402
from butler_jax.sharding.mesh import MeshConfig, mesh_config  # noqa: E402
from butler_jax.sharding.placement import cache_partition, named, place_cache  # noqa: E402
from butler_jax.sparsity import SparsityConfig, make_policy  # noqa: E402

GiB = 1 << 30
START = time.perf_counter()
DEFAULT_METHODS = "dense,oracle,tokenbutler_i1,tokenbutler_i2_nf,tokenbutler_i4_nf,tokenbutler_i8_nf,tokenbutler_i16_nf"


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - START:7.1f}s] {msg}", flush=True)


# --- methods -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Method:
    """A method label: dense | oracle | tokenbutler_i<N>[_nf]."""

    label: str
    kind: str
    interval: int = 1
    neighbor_fetch: bool = False

    @classmethod
    def parse(cls, label: str) -> "Method":
        label = label.strip()
        m = re.fullmatch(r"(dense|oracle|tokenbutler)(?:_i(\d+))?(_nf)?", label)
        if not m or (m.group(1) != "tokenbutler" and (m.group(2) or m.group(3))):
            raise SystemExit(f"unknown method {label!r}; use dense, oracle, tokenbutler_i<N> or tokenbutler_i<N>_nf")
        return cls(label, m.group(1), int(m.group(2) or 1), bool(m.group(3)))

    @property
    def sparse(self) -> bool:
        return self.kind != "dense"

    def sparsity(self, s: "Settings", predict_interval: int | None = None) -> SparsityConfig:
        return SparsityConfig(method=self.kind, budget=str(s.budget), n_sink=s.n_sink, n_window=s.n_window,
                              granularity="kv", dense_layers=s.dense_layers,
                              predict_interval=predict_interval or self.interval, neighbor_fetch=self.neighbor_fetch)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Model/predictor shapes and selection settings shared by the latency and breakdown benches."""

    cfg: ModelConfig
    pcfg: PredictorConfig
    budget: int
    n_sink: int
    n_window: int
    dense_layers: int = 1

    @property
    def itemsize(self) -> int:
        return 2 if self.cfg.dtype == "bfloat16" else 4

    def selected_tokens(self, m: Method, context: int) -> float:
        """K/V rows a sparse layer attends to per step: the budget (neighbour fetch: the forced
        tokens + ~2x the scored ones), capped by the visible tokens; reuse steps add on average
        (N - 1) / 2 tokens generated since the prediction."""
        visible = context + 1
        forced = self.n_sink + self.n_window
        n = min(visible, self.budget)
        if m.neighbor_fetch:
            n = min(visible, forced + 2 * max(0, self.budget - forced))
        return n + (m.interval - 1) / 2

    def read_bytes(self, m: Method, batch: int, context: int, weights: int, predictor_weights: int) -> dict:
        """Bytes a decode step must read from device memory (the floor's numerator), by kind."""
        c = self.cfg
        row = c.num_key_value_heads * c.resolved_head_dim * self.itemsize  # one token's K (or V), one layer, one row
        layers = c.num_hidden_layers
        dense = layers if m.kind == "dense" else min(self.dense_layers, layers)
        sparse = layers - dense
        kv = batch * dense * (context + 1) * 2 * row
        kv += batch * sparse * self.selected_tokens(m, context) * 2 * row if m.sparse else 0
        scoring = 0.0
        w = weights
        if m.kind == "oracle":  # the true logits read every cached key
            scoring = batch * sparse * (context + 1) * row
        if m.kind == "tokenbutler":  # importance keys of every token, once per prediction
            scoring = batch * sparse * c.num_key_value_heads * (context + 1) * self.pcfg.dDash * self.itemsize / m.interval
            w += predictor_weights
        return dict(weights=float(w), kv=float(kv), scoring=float(scoring), total=float(w + kv + scoring))

    def memory_parts(self, m: Method, batch: int, capacity: int, params_total: int, predictor_total: int) -> dict:
        """Device-memory estimate of one run by kind: resident weights, the KV cache, the importance
        keys, the largest step temporaries and index lists (`work`: + a 1.5 GiB margin for XLA/Triton
        workspace). `capacity`: the tokens this device holds."""
        c = self.cfg
        hkv, hq, hd, layers = c.num_key_value_heads, c.num_attention_heads, c.resolved_head_dim, c.num_hidden_layers
        parts = dict(weights=params_total + predictor_total, kv=2 * layers * batch * hkv * capacity * hd * self.itemsize,
                     keys=0, work=2 * batch * c.vocab_size * 4 + int(1.5 * GiB))
        if m.sparse:  # f32 logits of every query head, group maxima, radix keys; index lists
            parts["work"] += 3 * batch * hq * capacity * 4
        if m.kind == "tokenbutler":
            parts["keys"] = layers * batch * hkv * capacity * self.pcfg.dDash * self.itemsize
            k_sel = min(capacity, 2 * self.budget if m.neighbor_fetch else self.budget)
            parts["work"] += layers * batch * hkv * (k_sel + m.interval) * 5
        return {k: int(v) for k, v in parts.items()}

    def memory_bytes(self, m: Method, batch: int, capacity: int, params_total: int, predictor_total: int) -> int:
        """The total of `memory_parts`."""
        return sum(self.memory_parts(m, batch, capacity, params_total, predictor_total).values())


def load_settings(args) -> tuple[Settings, LlamaForCausalLM, LongctxPredictor]:
    cfg = dataclasses.replace(section(load_yaml(args.config), "model", ModelConfig), source="random", dtype="bfloat16")
    pcfg = PredictorConfig(kind="longctx", dDash=args.d_dash, intdim=args.intdim, producer_frequency=4)
    s = Settings(cfg, pcfg, args.budget, args.n_sink, args.n_window)
    return s, LlamaForCausalLM(cfg), LongctxPredictor(pcfg, cfg)


def init_predictor(s: Settings, predictor: LongctxPredictor, abstract: bool = False):
    """Random long-context predictor parameters in the model dtype (or their shapes)."""
    cfg = s.cfg

    def make():
        p = predictor.init(jax.random.PRNGKey(1), jnp.ones((1, 1, cfg.hidden_size)),
                           jnp.ones((1, 1, cfg.num_key_value_heads, cfg.resolved_head_dim)))["params"]
        return jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32), p)

    return jax.eval_shape(make) if abstract else jax.jit(make)()


def tree_bytes(tree) -> int:
    return sum(int(np.prod(p.shape)) * jnp.dtype(p.dtype).itemsize for p in jax.tree_util.tree_leaves(tree))


def weights_read_bytes(cfg: ModelConfig, params) -> int:
    """Parameter bytes a decode step reads: all but an untied input-embedding table (one row each)."""
    total = tree_bytes(params)
    if not cfg.tie_word_embeddings:
        total -= tree_bytes(params["embed_tokens"])
    return total


def device_memory_limit() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def run_meta(args, bandwidth: float) -> dict:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parent).stdout.strip()
    return dict(device=jax.devices()[0].device_kind, jax=jax.__version__,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                commit=(commit or os.environ.get("COMMIT", "")) + (" + uncommitted changes" if dirty else ""),
                command="python " + " ".join(sys.argv), bandwidth_TBps=bandwidth / 1e12)


# --- the timed loop ----------------------------------------------------------------------------
class Buffers(NamedTuple):
    """What a generation call takes and gives back (donated): the KV cache and, for TokenButler on one
    device, the long-context predictor's cached importance keys per layer [B, Hkv, capacity, d']."""
    cache: KVCache
    importance: tuple[jax.Array, ...] | None = None


def uses_importance_keys(m: "Method", mesh: MeshConfig | None) -> bool:
    return m.kind == "tokenbutler" and mesh is None


def importance_spec(s: "Settings", m: "Method", predictor, pparams, batch: int, capacity: int
                    ) -> tuple[jax.ShapeDtypeStruct, ...]:
    """Shapes of the importance keys [B, Hkv, capacity, d'] per layer: those of the policy's `init_state`."""
    policy, policy_params = make_policy(m.sparsity(s), s.cfg, (predictor, pparams))
    return jax.eval_shape(lambda pp: policy.init_state(pp, batch, capacity), policy_params).cache


def random_importance_keys(specs: tuple[jax.ShapeDtypeStruct, ...], key) -> tuple[jax.Array, ...]:
    """Random normal importance keys of `specs` for every position (the loop overwrites the ones it generates)."""
    make = jax.jit(lambda k: jax.random.normal(k, specs[0].shape, specs[0].dtype))
    return tuple(make(k) for k in jax.random.split(key, len(specs)))


def random_cache(cfg: ModelConfig, batch: int, capacity: int, length: int, key) -> KVCache:
    shape = (batch, cfg.num_key_value_heads, capacity, cfg.resolved_head_dim)
    dt = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32
    make = jax.jit(lambda k: jax.random.normal(k, shape, dt))
    keys = jax.random.split(key, 2 * cfg.num_hidden_layers)
    layers = range(cfg.num_hidden_layers)
    return KVCache(tuple(make(keys[2 * i]) for i in layers), tuple(make(keys[2 * i + 1]) for i in layers),
                   jnp.full((batch,), length, jnp.int32))


def cache_spec(cfg: ModelConfig, batch: int, capacity: int, mesh: MeshConfig | None = None) -> KVCache:
    """Shapes of the cache (placed on `mesh` as `sharding.placement` places it, when given)."""
    dt = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32
    n = cfg.num_hidden_layers
    shardings = named(mesh.build(), cache_partition(n)) if mesh else KVCache((None,) * n, (None,) * n, None)
    layer = (batch, cfg.num_key_value_heads, capacity, cfg.resolved_head_dim)
    return KVCache(tuple(jax.ShapeDtypeStruct(layer, dt, sharding=sh) for sh in shardings.k),
                   tuple(jax.ShapeDtypeStruct(layer, dt, sharding=sh) for sh in shardings.v),
                   jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=shardings.lengths))


def lower_decode(model, predictor, s: Settings, m: Method, params, pparams, batch: int, capacity: int, steps: int,
                 mesh: MeshConfig | None = None):
    """Lower the whole generation (the policy is a static value, the predictor params `pparams` a
    traced argument, the state initialised inside the jit; the cache donated and returned with
    its lengths reset, so calls can repeat; TokenButler's importance keys too, see `Buffers`). With
    `mesh`: the sharded decode loop (`sharding.decode.decode_loop_on_mesh`) over a cache placed on that mesh."""
    sparsity = m.sparsity(s)

    def run(p, pp, buffers: Buffers, first):
        policy, policy_params = make_policy(sparsity, s.cfg, (predictor, pp))  # a static policy; pp stays traced
        options = dict(policy=policy, max_new_tokens=steps, sampling=SamplingConfig(), stop_tokens=())
        cache = buffers.cache
        if mesh is not None:
            out, _, _, new = decode_loop_on_mesh(model, p, policy_params, first, cache, jax.random.PRNGKey(0), mesh=mesh,
                                              **options)
            return out, Buffers(new._replace(lengths=cache.lengths))
        state = policy.init_state(policy_params, batch, capacity)
        if buffers.importance is not None:
            state = state._replace(cache=buffers.importance)
        out, _, _, new, final = decode_loop(model, p, first, cache, state, jax.random.PRNGKey(0), return_cache=True,
                                            return_state=True, policy_params=policy_params, **options)
        return out, Buffers(new._replace(lengths=cache.lengths), final.cache if buffers.importance is not None else None)

    first = jax.ShapeDtypeStruct((batch,), jnp.int32)
    spec = Buffers(cache_spec(s.cfg, batch, capacity, mesh),
                   importance_spec(s, m, predictor, pparams, batch, capacity) if uses_importance_keys(m, mesh) else None)
    return jax.jit(run, donate_argnums=(2,)).lower(params, pparams, spec, first)


def time_compiled(compiled, params, pparams, buffers: Buffers, steps: int, repeats: int) -> tuple[list[float], Buffers]:
    """Seconds per generated token of each timed call (after one warm-up call) and the buffers back."""
    first = jnp.zeros((buffers.cache.lengths.shape[0],), jnp.int32)
    _, buffers = jax.block_until_ready(compiled(params, pparams, buffers, first))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _, buffers = jax.block_until_ready(compiled(params, pparams, buffers, first))
        times.append((time.perf_counter() - start) / (steps - 1))
    return times, buffers


def cache_alive(cache: KVCache | None) -> bool:
    return cache is not None and not any(a.is_deleted() for a in (*cache.k, *cache.v))


# --- the profile -------------------------------------------------------------------------------
NO_GPU = "no GPU device events in the trace: the profile needs a GPU"
FAMILIES = (  # (family, name substrings), the first match wins: "loop_select_fusion" is a fusion
    ("attention", ("attention", "attend", "flash", "combine_splits")),
    ("scoring", ("importance", "score")),
    ("matmul", ("gemm", "gemv", "matmul", "cublas", "dot", "nvjet", "xmma", "cutlass")),
    ("XLA fusion", ("fusion",)),
    ("selection", ("topk", "top_k", "hist", "select", "sort", "bracket", "threshold", "emit", "compact",
                   "count_kernel")),
    ("memory", ("memcpy", "memset", "copy")),
)


def kernel_family(name: str) -> str:
    """The coarse family of a GPU kernel by name substring (`FAMILIES`), else "other"."""
    low = name.lower()
    return next((family for family, keys in FAMILIES if any(k in low for k in keys)), "other")


def profile_summary(times: DeviceTimes, tokens: int) -> dict:
    """Per generated token: kernel us, device span us, gap = span - kernel us, launches, the
    families' and every kernel's us and launches (most time first); `NO_GPU` as the note without
    GPU events."""
    if not times.kernels_us:
        return dict(note=NO_GPU)
    kernels = [dict(name=n, family=kernel_family(n), us=us / tokens, launches=times.launches[n] / tokens)
               for n, us in times.kernels_us.items()]
    families: dict[str, dict] = {}
    for k in kernels:
        f = families.setdefault(k["family"], dict(us=0.0, launches=0.0, kernels=0))
        f.update(us=f["us"] + k["us"], launches=f["launches"] + k["launches"], kernels=f["kernels"] + 1)
    span = times.span_us
    return dict(tokens=tokens, kernel_us=times.kernel_us / tokens, span_us=None if span is None else span / tokens,
                gap_us=None if span is None else (span - times.kernel_us) / tokens,
                span_source="XLA Modules" if times.module_us is not None else "kernel extent",
                launches=sum(times.launches.values()) / tokens,
                families=dict(sorted(families.items(), key=lambda kv: -kv[1]["us"])), kernels=kernels)


def profile_compiled(compiled, params, pparams, buffers: Buffers, steps: int) -> tuple[dict, Buffers]:
    """`profile_summary` of one more (traced) generation call, and the buffers back; a failure is the
    summary's note (the cache may then be gone: `cache_alive`)."""
    first = jnp.zeros((buffers.cache.lengths.shape[0],), jnp.int32)
    held = [buffers]

    def call():
        _, held[0] = compiled(params, pparams, held[0], first)
        return held[0]

    try:
        return profile_summary(device_times(call, calls=1), steps - 1), held[0]
    except Exception as e:  # noqa: BLE001 - the timing stands without its profile
        return dict(note=f"profile failed: {type(e).__name__}: {str(e)[:300]}"), held[0]


# --- main --------------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/llama-3.1-8b.yaml")
    parser.add_argument("--contexts", default="32768,65536,131072")
    parser.add_argument("--batch", default="1,4", help="comma-separated batch sizes")
    add_decode_shape_args(parser)
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help="dense, oracle, tokenbutler_i<N> (long-context predictor, predict_interval N), tokenbutler_i<N>_nf (+ neighbour fetch)")
    parser.add_argument("--steps", type=int, default=17, help="tokens per generation (steps - 1 are timed)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls after the warm-up; the best counts")
    parser.add_argument("--compile-workers", type=int, default=8, help="threads compiling a group's methods in parallel")
    parser.add_argument("--mem-limit-gib", type=float, default=None, help="device memory to plan with (default: the allocator's limit)")
    parser.add_argument("--bandwidth-tbps", type=float, default=None, help="skip the read-bandwidth measurement and use this")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (memory estimates, floors, skips) and exit")
    parser.add_argument("--smoke", action="store_true", help="CPU toy run: tiny config, contexts 256/512, budget 64, 3 steps")
    parser.add_argument("--mesh", default=None,
                        help="decode on a device mesh: seq=N[,kv_heads=M] (default: the config's mesh: section, else one device)")
    parser.add_argument("--profile", action="store_true",
                        help="trace one more generation call per method: GPU kernel time per token "
                             "(decode_profile.json / .md / .png)")
    parser.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    if parser.parse_known_args(argv)[0].smoke:  # toy defaults; options given explicitly still win
        parser.set_defaults(config="configs/tiny.yaml", contexts="256,512", batch="1,2", budget=64, n_sink=4, n_window=16,
                            d_dash=8, intdim=32, steps=3, bandwidth_tbps=0.01, compile_workers=2)
    return parser.parse_args(argv)


def run_mesh(args) -> MeshConfig | None:
    """The mesh of a run: --mesh, else the config's mesh: section, else None (one device)."""
    return MeshConfig.parse(args.mesh) if args.mesh else mesh_config(load_yaml(args.config))


def run_capacity(context: int, steps: int, mesh: MeshConfig | None) -> int:
    """Cache slots of a run: the context + the generated tokens (+1), split evenly over mesh.seq."""
    capacity = context + steps + 1
    return capacity if mesh is None else local_capacity(capacity, mesh) * mesh.seq


def main(argv=None) -> None:
    args = parse_args(argv)
    s, model, predictor = load_settings(args)
    cfg = s.cfg
    mesh = run_mesh(args)
    methods = [Method.parse(x) for x in args.methods.split(",") if x.strip()]
    batches = [int(x) for x in args.batch.split(",")]
    contexts = [int(x) for x in args.contexts.split(",")]
    params_shape = jax.eval_shape(lambda: init_params(cfg))
    pparams_shape = init_predictor(s, predictor, abstract=True)
    params_total, predictor_total = tree_bytes(params_shape), tree_bytes(pparams_shape)
    weights = weights_read_bytes(cfg, params_shape)
    limit = int(args.mem_limit_gib * GiB) if args.mem_limit_gib else (None if args.dry_run else device_memory_limit())
    if args.dry_run and limit is None:
        limit = int(0.94 * 79.6 * GiB)  # an H100 80 GB at the fraction set above
    log(f"device {jax.devices()[0].device_kind}; weights {params_total / 1e9:.2f} GB resident, {weights / 1e9:.2f} GB read "
        f"per token; predictor {predictor_total / 1e6:.1f} MB; memory limit "
        f"{'none known' if limit is None else f'{limit / GiB:.1f} GiB'}")

    if args.bandwidth_tbps:
        bandwidth = args.bandwidth_tbps * 1e12
    elif args.dry_run:
        bandwidth = 2.8e12
    else:
        bandwidth = read_bandwidth()
        log(f"copy bandwidth {copy_bandwidth() / 1e12:.2f} TB/s (read + write; for comparison only)")
    log(f"read bandwidth {bandwidth / 1e12:.2f} TB/s{' (given)' if args.bandwidth_tbps or args.dry_run else ''}: every floor uses it")

    rows: list[dict] = []
    profiles: list[dict] = []
    plan = []
    for batch in batches:
        for context in contexts:
            capacity = run_capacity(context, args.steps, mesh)
            group = []
            for m in methods:
                need = s.memory_bytes(m, batch, capacity // (mesh.seq if mesh else 1), params_total, predictor_total)
                floor = s.read_bytes(m, batch, context, weights, predictor_total)
                row = dict(method=m.label, batch=batch, context=context, budget=args.budget, steps=args.steps,
                           predict_interval=m.interval if m.kind == "tokenbutler" else None,
                           neighbor_fetch=m.neighbor_fetch, memory_estimate_GiB=need / GiB,
                           read_bytes=floor, floor_ms=1e3 * floor["total"] / bandwidth)
                if limit is not None and need > limit:
                    row.update(status="skipped", reason=f"needs ~{need / GiB:.1f} GiB > {limit / GiB:.1f} GiB device memory")
                    log(f"SKIP {m.label} B={batch} ctx={context}: {row['reason']}")
                    rows.append(row)
                else:
                    group.append((m, row))
            if group:
                plan.append((batch, context, capacity, group))
    if args.dry_run:
        for batch, context, _, group in plan:
            for m, row in group:
                log(f"plan {m.label:20s} B={batch} ctx={context:6d}: ~{row['memory_estimate_GiB']:.1f} GiB, "
                    f"floor {row['floor_ms']:.2f} ms ({row['read_bytes']['total'] / 1e9:.2f} GB)")
        return

    params = jax.jit(lambda: init_params(cfg))()
    pparams = init_predictor(s, predictor)
    pool = concurrent.futures.ThreadPoolExecutor(max(1, args.compile_workers))
    meta = run_meta(args, bandwidth)
    for batch, context, capacity, group in plan:
        log(f"== B={batch} ctx={context}: compiling {len(group)} methods")
        futures = []
        for m, row in group:
            t0 = time.perf_counter()
            try:
                lowered = lower_decode(model, predictor, s, m, params, pparams, batch, capacity, args.steps, mesh)
            except Exception as e:  # e.g. neighbour fetch not implemented yet
                futures.append((m, row, None, f"{type(e).__name__}: {str(e)[:300]}"))
                continue
            row["lower_s"] = time.perf_counter() - t0

            def compile_job(lowered=lowered):
                t = time.perf_counter()
                return lowered.compile(), time.perf_counter() - t

            futures.append((m, row, pool.submit(compile_job), None))
        # Time nothing while compiles run: their threads would compete with the loop's host work.
        concurrent.futures.wait([f for _, _, f, _ in futures if f is not None])
        log(f"compiled B={batch} ctx={context}")
        cache = None
        for m, row, future, error in futures:
            try:
                if error:
                    raise RuntimeError(error)
                compiled, row["compile_s"] = future.result()
                if not cache_alive(cache):
                    cache = None
                    gc.collect()
                    cache = random_cache(cfg, batch, capacity, context, jax.random.PRNGKey(context + batch))
                    cache = cache if mesh is None else place_cache(cache, mesh.build())
                keys = (random_importance_keys(importance_spec(s, m, predictor, pparams, batch, capacity),
                                               jax.random.PRNGKey(context + batch + 1))
                        if uses_importance_keys(m, mesh) else None)
                buffers = Buffers(cache, keys)
                times, buffers = time_compiled(compiled, params, pparams, buffers, args.steps, args.repeats)
                profile, buffers = (profile_compiled(compiled, params, pparams, buffers, args.steps) if args.profile
                                    else (None, buffers))
                cache = buffers.cache
                del compiled, buffers, keys
            except Exception as e:  # noqa: BLE001 - one failing method must not stop the matrix
                msg = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                status = "skipped" if "not implemented" in msg else "failed"
                row.update(status=status, reason=msg)
                log(f"{status.upper()} {m.label} B={batch} ctx={context}: {msg}")
                rows.append(row)
                continue
            seconds = min(times)
            row.update(status="ok", ms_per_token=1e3 * seconds, timed_ms_per_token=[1e3 * t for t in times],
                       ratio_to_floor=1e3 * seconds / row["floor_ms"])
            rows.append(row)
            log(f"{m.label:20s} B={batch} ctx={context:6d}: {1e3 * seconds:8.2f} ms/token  floor {row['floor_ms']:6.2f} ms "
                f"({row['ratio_to_floor']:.2f}x)  [compile {row.get('compile_s', 0):.0f}s]")
            if profile is not None:
                profiles.append(dict(method=m.label, batch=batch, context=context, ms_per_token=row["ms_per_token"],
                                     floor_ms=row["floor_ms"], **profile))
                log(f"profile {m.label} B={batch} ctx={context}: {profile_line(profile)}")
        del cache
        gc.collect()
        add_speedups(rows)  # after every group: a run cut short keeps what it measured
        write_outputs(args, meta, s, rows)
        if args.profile:
            write_profile(args, meta, profiles)
    pool.shutdown()


def add_speedups(rows: list[dict]) -> None:
    dense = {(r["batch"], r["context"]): r["ms_per_token"] for r in rows if r["method"] == "dense" and r.get("status") == "ok"}
    for r in rows:
        base = dense.get((r["batch"], r["context"]))
        if r.get("status") == "ok" and base:
            r["speedup_vs_dense"] = base / r["ms_per_token"]


def markdown(meta: dict, s: Settings, rows: list[dict], args) -> str:
    cfg = s.cfg
    lines = [f"# End-to-end decode latency, {Path(args.config).stem} shapes (random {cfg.dtype} weights), {meta['device']}", "",
             f"- Command: `{meta['command']}`", f"- jax {meta['jax']}, {meta['date']}, commit {meta['commit']}",
             f"- Method: KV cache filled with random K/V up to the context; `decode_loop` generates {args.steps} tokens greedily "
             f"in one jitted `lax.while_loop` (cache donated); one warm-up call, then the best of {args.repeats} timed calls "
             f"/ {args.steps - 1} tokens. Budget {args.budget} tokens per KV head ({args.n_sink} sinks + {args.n_window} recent "
             f"inside it), layer 0 dense, per-KV-head selection. TokenButler: long-context producer predictor "
             f"(d'={s.pcfg.dDash}, I={s.pcfg.intdim}, G={s.pcfg.producer_frequency}), `_iN` = predict_interval N, `_nf` = "
             "neighbour fetch (each prediction's scored tokens widened to ~2x).",
             f"- Floor = bytes that must be read per token / measured read-only bandwidth ({meta['bandwidth_TBps']:.2f} TB/s): "
             "weights (untied input embedding excluded; + predictor), K/V rows attended (selected rows on sparse layers), "
             "Oracle: every cached key for scoring; TokenButler: importance keys / N. Ratio = measured / floor; "
             "speed-up = dense ms/token / method ms/token at the same batch and context.", ""]
    ok = [r for r in rows if r.get("status") == "ok"]
    for batch in sorted({r["batch"] for r in rows}):
        contexts = sorted({r["context"] for r in ok if r["batch"] == batch})
        if not contexts:
            continue
        lines += [f"## Batch {batch}", "",
                  "| method | " + " | ".join(f"{context_label(c)} ms/token | floor | ratio | vs dense" for c in contexts) + " |",
                  "|---|" + "---:|---:|---:|---:|" * len(contexts)]
        for label in dict.fromkeys(r["method"] for r in rows):
            cells = []
            for c in contexts:
                r = next((r for r in rows if r["method"] == label and r["batch"] == batch and r["context"] == c), None)
                if r is None or r.get("status") != "ok":
                    cells.append(f"{r['status'] if r else '-'} | - | - | -")
                else:
                    sp = r.get("speedup_vs_dense")
                    cells.append(f"{r['ms_per_token']:.2f} | {r['floor_ms']:.2f} | {r['ratio_to_floor']:.2f}x | "
                                 + (f"{sp:.2f}x" if sp else "-"))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    other = [r for r in rows if r.get("status") != "ok"]
    if other:
        lines += ["## Not run", ""]
        lines += [f"- {r['method']} B={r['batch']} ctx={r['context']}: {r['status']}: {r['reason']}" for r in other]
        lines.append("")
    return "\n".join(lines)


def write_outputs(args, meta: dict, s: Settings, rows: list[dict]) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(config=args.config, budget=args.budget, n_sink=args.n_sink, n_window=args.n_window,
                    dense_layers=s.dense_layers, steps=args.steps, repeats=args.repeats, d_dash=s.pcfg.dDash,
                    intdim=s.pcfg.intdim, producer_frequency=s.pcfg.producer_frequency, mesh=args.mesh)
    (out / "decode_latency.json").write_text(json.dumps(dict(meta=meta, settings=settings, rows=rows), indent=1))
    text = markdown(meta, s, rows, args)
    (out / "decode_latency.md").write_text(text)
    print(text, flush=True)
    try:
        plot_latency(rows, out / "decode_latency.png", title=f"{Path(args.config).stem}, {meta['device']}, budget {args.budget}")
        log(f"wrote {out / 'decode_latency.png'}")
    except Exception as e:  # noqa: BLE001 - the numbers are written already; the plot can be redone
        log(f"plot skipped: {type(e).__name__}: {e} (redo: python bench/plot_decode.py --latency {out / 'decode_latency.json'})")
    log(f"wrote {out / 'decode_latency.json'} and {out / 'decode_latency.md'}")


def profile_line(p: dict) -> str:
    """One line of a profile: its note, else kernel us, span, gap and launches per token."""
    if "note" in p:
        return p["note"]
    span = "-" if p["span_us"] is None else f"{p['span_us']:.0f}"
    gap = "-" if p["gap_us"] is None else f"{p['gap_us']:.0f}"
    return (f"kernels {p['kernel_us']:.0f} us/token, span {span} us ({p['span_source']}), gap {gap} us, "
            f"{p['launches']:.0f} launches/token")


def profile_markdown(meta: dict, profiles: list[dict], top: int = 25) -> str:
    """decode_profile.md: one section per profiled method, its totals, families and top kernels."""
    lines = [f"# Decode profile per generated token, {meta['device']}", "",
             f"- Command: `{meta['command']}`", f"- jax {meta['jax']}, {meta['date']}, commit {meta['commit']}",
             "- One traced generation call per method after its timing (jax.profiler), / the tokens it generates. "
             "Kernel time: the GPU kernels' durations summed (no gaps); span: the call's device time (\"XLA Modules\" "
             "where traced, else first kernel start to last kernel end); gap = span - kernel time (idle, launch and "
             "control-flow time). Tracing adds overhead per launch: compare the span with the timed ms/token.", ""]
    for p in profiles:
        lines += [f"## {p['method']}, B={p['batch']}, context {context_label(p['context'])}", "",
                  f"- timed {p['ms_per_token']:.3f} ms/token, floor {p['floor_ms']:.3f} ms", f"- {profile_line(p)}", ""]
        if "note" in p:
            continue
        lines += ["| family | us/token | % of kernel time | launches/token | kernels |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {f} | {v['us']:.1f} | {100 * v['us'] / p['kernel_us']:.1f} | {v['launches']:.1f} | "
                  f"{v['kernels']} |" for f, v in p["families"].items()]
        lines += ["", f"Top {min(top, len(p['kernels']))} of {len(p['kernels'])} kernels:", "",
                  "| kernel | family | us/token | % | launches/token | us/launch |", "|---|---|---:|---:|---:|---:|"]
        lines += [f"| `{k['name'][:100]}` | {k['family']} | {k['us']:.1f} | {100 * k['us'] / p['kernel_us']:.1f} | "
                  f"{k['launches']:.1f} | {k['us'] / k['launches']:.2f} |" for k in p["kernels"][:top]]
        lines.append("")
    return "\n".join(lines)


def write_profile(args, meta: dict, profiles: list[dict]) -> None:
    """decode_profile.json and decode_profile.md to --out."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode_profile.json").write_text(json.dumps(dict(meta=meta, profiles=profiles), indent=1))
    (out / "decode_profile.md").write_text(profile_markdown(meta, profiles))
    log(f"wrote {out / 'decode_profile.json'} and {out / 'decode_profile.md'}")
    if any(p.get("families") for p in profiles):
        plot_profile(profiles, out / "decode_profile.png", title=f"GPU kernel time per token, {meta['device']}")
        log(f"wrote {out / 'decode_profile.png'}")


if __name__ == "__main__":
    main()
