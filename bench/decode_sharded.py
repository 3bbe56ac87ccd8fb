"""Sharded decode (issue 22): the plan of a sharded run, and the cost of the sharded code path.

`--dry-run` (arithmetic, runs anywhere): for a model config, contexts, batch and device counts,
the memory per device (weights, KV cache, importance keys, step temporaries) and the bandwidth
floor per token of the sharded decode (`butler_jax/sharding`): the cache and the importance keys
split along the sequence over N devices (`mesh: {seq: N}`; `--kv-heads M` also splits the KV
heads, N * M devices), weights replicated. Per device and token it reads the whole weights, its
1/(N M) of the dense layers' K/V and of the importance keys, and its share of the selected rows
(`floor`: spread evenly; `skewed`: every selected row on one device); bytes from
`bench/decode_latency.Settings`. It receives, per sparse layer, the all_gather of every device's
sorted candidate keys (N x budget int32 per selection head and row) and, per layer, the LSE merge
(pmax + 2 psum of [B, Hq, hd] f32): `comm` at `--link-tbps`.

`--overhead` (one GPU): the unsharded decode against the sharded path on a one-device mesh,
same cache, same run, alternating timed rounds (the machinery of `bench/decode_latency.py`).

    python bench/decode_sharded.py --dry-run --devices 2,4,8 --contexts 524288,1048576
    python bench/decode_sharded.py --overhead --contexts 131072 --out $OUT/sharded   # one H200
    python bench/decode_sharded.py --overhead --smoke --out /tmp/sharded              # CPU toy run

Writes decode_sharded_plan.{json,md} / decode_sharded_overhead.{json,md} to --out.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `bench.*` imports

import argparse  # noqa: E402
import json  # noqa: E402

import jax  # noqa: E402

from bench.decode_latency import (GiB, Method, Settings, init_predictor, load_settings, log, lower_decode,  # noqa: E402
                                  random_cache, run_capacity, run_meta, time_compiled, tree_bytes,
                                  weights_read_bytes)
from bench.plot_decode import context_label  # noqa: E402
from bench.timing import add_decode_shape_args, read_bandwidth  # noqa: E402
from butler_jax.models.llama import init_params  # noqa: E402
from butler_jax.sharding.mesh import MeshConfig  # noqa: E402
from butler_jax.sharding.placement import place_cache  # noqa: E402

H200_READ_TBPS = 4.40  # bench.timing.read_bandwidth on one H200, 2026-12-02 (bench/results/select_h200.md)
H200_GIB = 139.7  # device memory JAX reports on an H200 (141 GB)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--dry-run", action="store_true", help="print the plan (memory per device, floors) and exit")
    mode.add_argument("--overhead", action="store_true", help="time unsharded vs a one-device mesh (one GPU)")
    parser.add_argument("--config", default="configs/llama-3.1-8b.yaml")
    parser.add_argument("--contexts", default="524288,1048576")
    parser.add_argument("--batch", default="1", help="comma-separated batch sizes")
    parser.add_argument("--devices", default="2,4,8", help="dry run: comma-separated device counts N * M")
    parser.add_argument("--kv-heads", type=int, default=1, help="dry run: devices along the KV heads (M)")
    parser.add_argument("--methods", default="dense,tokenbutler_i1", help="dense, tokenbutler_i1 (what runs sharded)")
    add_decode_shape_args(parser)
    parser.add_argument("--steps", type=int, default=17, help="tokens per generation (steps - 1 are timed)")
    parser.add_argument("--repeats", type=int, default=3, help="overhead: alternating timed rounds; the best counts")
    parser.add_argument("--bandwidth-tbps", type=float, default=None,
                        help=f"read bandwidth per device (default: measured on a GPU, else {H200_READ_TBPS}, an H200's)")
    parser.add_argument("--link-tbps", type=float, default=0.45, help="dry run: device-to-device bandwidth each way "
                        "(NVLink 4 on an H200: 900 GB/s both ways)")
    parser.add_argument("--mem-gib", type=float, default=H200_GIB, help="dry run: memory per device")
    parser.add_argument("--smoke", action="store_true", help="CPU toy shapes (configs/tiny.yaml, context 256)")
    parser.add_argument("--out", default="bench/results")
    if parser.parse_known_args(argv)[0].smoke:
        parser.set_defaults(config="configs/tiny.yaml", contexts="256", budget=64, n_sink=4, n_window=16, d_dash=8,
                            intdim=32, steps=3, repeats=2, bandwidth_tbps=0.01)
    return parser.parse_args(argv)


def bandwidth(args) -> tuple[float, str]:
    """(read bytes/s, where the figure comes from)."""
    if args.bandwidth_tbps:
        return args.bandwidth_tbps * 1e12, "given"
    if jax.default_backend() == "gpu":
        return read_bandwidth(), "measured (bench.timing.read_bandwidth)"
    return H200_READ_TBPS * 1e12, "an H200's, recorded in bench/results/select_h200.md"


# --- the plan ----------------------------------------------------------------------------------
def plan_row(s: Settings, m: Method, batch: int, context: int, seq: int, heads: int, sizes: dict, bw: float,
             link: float, mem_limit: float) -> dict:
    """Memory per device and per-token floors of one (method, batch, context, mesh)."""
    c = s.cfg
    devices = seq * heads
    capacity = run_capacity(context, 1, MeshConfig(seq=seq)) // seq  # the tokens one device holds
    mem = s.memory_parts(m, batch, capacity, sizes["params"], sizes["predictor"])
    mem = dict(mem, kv=mem["kv"] // heads, keys=mem["keys"] // heads)
    read = s.read_bytes(m, batch, context, sizes["weights"], sizes["predictor"])
    dense_layers = c.num_hidden_layers if m.kind == "dense" else min(s.dense_layers, c.num_hidden_layers)
    sparse_layers = c.num_hidden_layers - dense_layers
    row_bytes = c.num_key_value_heads * c.resolved_head_dim * s.itemsize
    kv_dense = batch * dense_layers * (context + 1) * 2 * row_bytes
    kv_sparse = read["kv"] - kv_dense
    even = read["weights"] + (kv_dense + kv_sparse + read["scoring"]) / devices
    skewed = read["weights"] + (kv_dense + read["scoring"]) / devices + kv_sparse / heads
    hsel = c.num_key_value_heads // heads
    gather = batch * sparse_layers * hsel * seq * s.budget * 4 if m.sparse and seq > 1 else 0
    merge = batch * c.num_hidden_layers * (c.num_attention_heads // heads) * (c.resolved_head_dim + 2) * 4 * 3 * (seq > 1)
    total = sum(mem.values())
    return dict(method=m.label, batch=batch, context=context, devices=devices, mesh=dict(seq=seq, kv_heads=heads),
                tokens_per_device=capacity, memory_GiB={k: v / GiB for k, v in mem.items()}, memory_total_GiB=total / GiB,
                fits=total <= mem_limit * GiB, read_GB_per_device=even / 1e9, floor_ms=1e3 * even / bw,
                skewed_floor_ms=1e3 * skewed / bw, comm_MB=(gather + merge) / 1e6,
                comm_ms=1e3 * (gather + merge) / link if link else 0.0)


def plan_markdown(meta: dict, rows: list[dict], args) -> str:
    lines = [f"# Sharded decode plan, {Path(args.config).stem} shapes", "",
             f"- Command: `{meta['command']}`", f"- {meta['date']}, commit {meta['commit']} (arithmetic: no device time)",
             f"- Read bandwidth {meta['bandwidth_TBps']:.2f} TB/s per device ({meta['bandwidth_source']}); links "
             f"{args.link_tbps:.2f} TB/s each way; {args.mem_gib:.1f} GiB per device. Budget {args.budget} tokens per KV head "
             f"({args.n_sink} sinks + {args.n_window} recent inside it), layer 0 dense; TokenButler: long-context predictor "
             f"(d'={args.d_dash}, I={args.intdim}), predict_interval 1.",
             "- Memory per device: weights (replicated; + predictor), its part of the KV cache and of the importance keys, "
             "step temporaries and index lists + 1.5 GiB workspace (`work`). Floor: bytes one device reads per token "
             "(whole weights + its share of K/V rows, selected rows spread evenly) / read bandwidth; skewed: every selected "
             "row on one device. Comm: bytes each device receives per token (all_gather of the candidate keys on sparse "
             "layers, LSE merge on every layer) and their time on the links; the collectives' latency (4 per layer) is not in it.",
             ""]
    lines += ["| method | B | context | devices | tokens/device | weights GiB | KV GiB | keys GiB | work GiB | total GiB | fits "
              "| floor ms | skewed ms | comm MB | comm ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        g = r["memory_GiB"]
        lines.append(f"| {r['method']} | {r['batch']} | {context_label(r['context'])} | {r['devices']} "
                     f"(seq {r['mesh']['seq']} x kv {r['mesh']['kv_heads']}) | {r['tokens_per_device']} | {g['weights']:.1f} | "
                     f"{g['kv']:.1f} | {g['keys']:.2f} | {g['work']:.1f} | {r['memory_total_GiB']:.1f} | "
                     f"{'yes' if r['fits'] else 'no'} | {r['floor_ms']:.2f} | {r['skewed_floor_ms']:.2f} | {r['comm_MB']:.2f} | "
                     f"{r['comm_ms']:.3f} |")
    return "\n".join(lines) + "\n"


def dry_run(args, s: Settings, model, predictor) -> None:
    bw, source = bandwidth(args)
    params_shape = jax.eval_shape(lambda: init_params(s.cfg))
    sizes = dict(params=tree_bytes(params_shape), predictor=tree_bytes(init_predictor(s, predictor, abstract=True)),
                 weights=weights_read_bytes(s.cfg, params_shape))
    rows = []
    for m in (Method.parse(x) for x in args.methods.split(",") if x.strip()):
        for batch in (int(x) for x in args.batch.split(",")):
            for context in (int(x) for x in args.contexts.split(",")):
                for devices in (int(x) for x in args.devices.split(",")):
                    if devices % args.kv_heads:
                        raise SystemExit(f"--devices {devices} is not a multiple of --kv-heads {args.kv_heads}")
                    rows.append(plan_row(s, m, batch, context, devices // args.kv_heads, args.kv_heads, sizes, bw,
                                         args.link_tbps * 1e12, args.mem_gib))
    meta = dict(run_meta(args, bw), bandwidth_source=source)
    write(args, "decode_sharded_plan", meta, rows, plan_markdown(meta, rows, args))


# --- the overhead of the sharded path ----------------------------------------------------------
def overhead(args, s: Settings, model, predictor) -> None:
    """One device: each method unsharded and on a one-device mesh, alternating timed rounds."""
    cfg, one = s.cfg, MeshConfig(seq=1)
    params = jax.jit(lambda: init_params(cfg))()
    pparams = init_predictor(s, predictor)
    meta = dict(run_meta(args, 0.0), mesh="seq=1 (one device) vs no mesh")
    rows = []
    for batch in (int(x) for x in args.batch.split(",")):
        for context in (int(x) for x in args.contexts.split(",")):
            capacity = run_capacity(context, args.steps, one)  # the same cache for both paths
            cache = place_cache(random_cache(cfg, batch, capacity, context, jax.random.PRNGKey(context)), one.build())
            for m in (Method.parse(x) for x in args.methods.split(",") if x.strip()):
                compiled = {}
                for path, mesh in (("unsharded", None), ("sharded", one)):
                    log(f"compiling {m.label} B={batch} ctx={context} {path}")
                    compiled[path] = lower_decode(model, predictor, s, m, params, pparams, batch, capacity, args.steps,
                                                  mesh).compile()
                best = {path: float("inf") for path in compiled}
                for _ in range(args.repeats):  # alternate, so drifts hit both paths alike
                    for path, fn in compiled.items():
                        times, cache = time_compiled(fn, params, pparams, cache, args.steps, 1)
                        best[path] = min(best[path], times[0])
                row = dict(method=m.label, batch=batch, context=context, steps=args.steps, repeats=args.repeats,
                           unsharded_ms=1e3 * best["unsharded"], sharded_ms=1e3 * best["sharded"],
                           overhead_pct=100 * (best["sharded"] / best["unsharded"] - 1))
                rows.append(row)
                log(f"{m.label:16s} B={batch} ctx={context}: unsharded {row['unsharded_ms']:.3f} ms/token, one-device "
                    f"mesh {row['sharded_ms']:.3f} ms/token ({row['overhead_pct']:+.2f} %)")
                del compiled
            del cache
    lines = [f"# Sharded decode path on a one-device mesh vs unsharded, {Path(args.config).stem} shapes, {meta['device']}",
             "", f"- Command: `{meta['command']}`", f"- jax {meta['jax']}, {meta['date']}, commit {meta['commit']}",
             f"- Both paths decode the same random cache (`bench/decode_latency.py` machinery: one jitted while_loop of "
             f"{args.steps} tokens, cache donated); {args.repeats} alternating rounds, the best per path / "
             f"{args.steps - 1} tokens. Budget {args.budget} ({args.n_sink} sinks + {args.n_window} recent), layer 0 "
             "dense; TokenButler: long-context predictor, predict_interval 1. Issue 22's bound: overhead <= 3 %.", "",
             "| method | B | context | unsharded ms/token | one-device mesh ms/token | overhead |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['batch']} | {context_label(r['context'])} | {r['unsharded_ms']:.3f} | "
              f"{r['sharded_ms']:.3f} | {r['overhead_pct']:+.2f} % |" for r in rows]
    write(args, "decode_sharded_overhead", meta, rows, "\n".join(lines) + "\n")


def write(args, name: str, meta: dict, rows: list[dict], text: str) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(dict(meta=meta, settings=vars(args), rows=rows), indent=1))
    (out / f"{name}.md").write_text(text)
    print(text, flush=True)
    log(f"wrote {out / name}.json and .md")


def main(argv=None) -> None:
    args = parse_args(argv)
    s, model, predictor = load_settings(args)
    (dry_run if args.dry_run else overhead)(args, s, model, predictor)


if __name__ == "__main__":
    main()
