"""Control flow and copies of one compiled decode step, counted in the compiled HLO (CPU is enough).

Lowers the benchmark's whole generation (`bench.decode_latency.lower_decode`: Llama shapes,
random weights, the policy of each method) with `--layers` layers, compiles it, and counts per
step (the decode `while` body and everything it calls, fusion bodies excluded: a copy inside a
fusion is no copy) the instructions that cost time beyond the ops: `conditional`, `while`,
`copy` / `copy-start`, `sort`, and the in-place updates `dynamic-update-slice` / `scatter`.
On GPU every `conditional` and every `while` iteration reads its predicate back to the host.

    python bench/decode_hlo.py --methods dense,tokenbutler_i1,tokenbutler_i4_nf --layers 4
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `bench.*` imports

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import math  # noqa: E402
from collections import Counter  # noqa: E402

from bench.decode_latency import Method, load_settings, lower_decode, init_predictor  # noqa: E402
from butler_jax.models.llama import LlamaForCausalLM, init_params  # noqa: E402

import jax  # noqa: E402

COUNTED = ("conditional", "while", "copy", "copy-start", "sort", "dynamic-update-slice", "scatter")
COLUMNS = (*COUNTED, "copy MB")
_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) ")
_OP = re.compile(r"=\s*[^=]*?\s([a-z][\w\-]*)\(")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition|branch_computations|true_computation|false_computation)=\{?([^,}]+(?:,\s*%[\w.\-]+)*)\}?")


def computations(text: str) -> dict[str, list[str]]:
    """Compiled HLO text -> {computation name: its instruction lines}."""
    comps, name = {}, None
    for line in text.splitlines():
        if line.endswith("{") and not line.startswith(" "):
            name = _HEADER.match(line).group(1)
            comps[name] = []
        elif name is not None and line.startswith(" "):
            comps[name].append(line.strip())
    return comps


def callees(line: str) -> list[str]:
    return [c.strip().lstrip("%") for m in _CALLS.finditer(line) for c in m.group(1).split(",")]


_ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8}


def copied_bytes(line: str) -> int:
    """Bytes written by a copy instruction (its result shape)."""
    m = re.search(r"=\s*(\w+)\[([\d,]*)\]", line)
    if not m or m.group(1) not in _ITEMSIZE:
        return 0
    return _ITEMSIZE[m.group(1)] * math.prod(int(d) for d in m.group(2).split(",") if d)


def step_counts(text: str) -> Counter:
    """COUNTED instructions in the outermost while loop's body and what it calls (fusions
    excluded), and "copy MB": the megabytes those copies write per step."""
    comps = computations(text)
    entry = next(n for n in comps if text.find(f"ENTRY %{n} ") >= 0 or text.find(f"ENTRY {n} ") >= 0)
    loop = next(line for line in comps[entry] if _op(line) == "while")
    body = re.search(r"body=%?([\w.\-]+)", loop).group(1)
    counts, seen, todo = Counter(), set(), [body]
    while todo:
        name = todo.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        for line in comps[name]:
            op = _op(line)
            if op in COUNTED:
                counts[op] += 1
            if op in ("copy", "copy-start"):
                counts["copy MB"] += copied_bytes(line) / 1e6
            if op != "fusion":
                todo += callees(line)
    return counts


def _op(line: str) -> str | None:
    m = _OP.search(line)
    return m.group(1) if m else None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/llama-3.1-8b.yaml")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers (counts scale per layer)")
    ap.add_argument("--context", type=int, default=4096, help="cache capacity - steps - 1")
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--n-sink", type=int, default=128)
    ap.add_argument("--n-window", type=int, default=512)
    ap.add_argument("--d-dash", type=int, default=16)
    ap.add_argument("--intdim", type=int, default=512)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--methods", default="dense,tokenbutler_i1,tokenbutler_i1_nf,tokenbutler_i4,tokenbutler_i4_nf")
    ap.add_argument("--dump", default=None, help="folder to write each method's compiled HLO text to")
    args = ap.parse_args(argv)
    s, _, _ = load_settings(args)
    s = dataclasses.replace(s, cfg=dataclasses.replace(s.cfg, num_hidden_layers=args.layers))
    from butler_jax.models.predictor_longctx import LongctxPredictor

    model, predictor = LlamaForCausalLM(s.cfg), LongctxPredictor(s.pcfg, s.cfg)
    params = jax.eval_shape(lambda: init_params(s.cfg))
    pparams = init_predictor(s, predictor, abstract=True)
    print(f"{jax.devices()[0].platform}, {args.layers} layers, capacity {args.context + args.steps + 1}, budget {args.budget}")
    print("| method | " + " | ".join(COLUMNS) + " |\n|---|" + "---:|" * len(COLUMNS))
    for label in args.methods.split(","):
        m = Method.parse(label)
        text = lower_decode(model, predictor, s, m, params, pparams, 1, args.context + args.steps + 1, args.steps).compile().as_text()
        if args.dump:
            os.makedirs(args.dump, exist_ok=True)
            Path(args.dump, f"{label}.hlo.txt").write_text(text)
        c = step_counts(text)
        print(f"| {label} | " + " | ".join(f"{c[k]:.0f}" for k in COLUMNS) + " |", flush=True)


if __name__ == "__main__":
    main()
