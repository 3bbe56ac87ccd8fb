"""Tokens/s of `butler_jax.load(...).generate` (the user-facing path), dense vs TokenButler.

    python bench/generate_speed.py                       # embedded SmolLM2-135M + shipped predictor (GPU)
    python bench/generate_speed.py --smoke               # CPU check: batch 1, 8 new tokens, one repeat

Each method runs once to compile, then `--repeats` timed calls (the best is reported). Prompts are
cut from WikiText-2 (shipped) to `--context` tokens, no chat template; generation is greedy and
stops at EOS, so the table shows the tokens actually generated. Writes
bench/results/generate_<device>.md (device, date, commit, JAX version, command).
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
from pathlib import Path

import jax

import butler_jax
from butler_jax.paths import PACKAGE_DIR

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = {  # label -> generate() settings
    "dense": dict(method="dense"),
    "tokenbutler": dict(method="tokenbutler"),
    "tokenbutler_i4_nf": dict(method="tokenbutler", predict_interval=4, neighbor_fetch=True),
}


def prompts(model: butler_jax.Model, batch: int, context: int) -> list[list[int]]:
    """`batch` disjoint windows of `context` WikiText-2 test tokens."""
    text = (PACKAGE_DIR / "eval" / "data" / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    ids = model.tokenizer.encode(text[: 8 * batch * context])
    if len(ids) < batch * context:
        raise ValueError(f"WikiText-2 slice too short for batch={batch} x context={context}")
    return [ids[i * context:(i + 1) * context] for i in range(batch)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--context", type=int, default=1024, help="prompt tokens per row")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--budget", default="sparsity=0.5")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {list(METHODS)}")
    parser.add_argument("--smoke", action="store_true", help="CPU check: batch 1, context 64, 8 new tokens, 1 repeat")
    parser.add_argument("--out", default=None, help="markdown file (default bench/results/generate_<device>.md)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch, args.context, args.max_new_tokens, args.repeats, args.dtype = "1", 64, 8, 1, "float32"

    model = butler_jax.load("embedded", dtype=args.dtype)
    device = jax.devices()[0]
    rows = []
    for batch in (int(b) for b in args.batch.split(",")):
        ids = prompts(model, batch, args.context)
        for label in args.methods.split(","):
            settings = dict(METHODS[label], budget=args.budget, max_new_tokens=args.max_new_tokens)
            compile_s = model.generate_tokens(ids, **settings)[1]
            runs = [model.generate_tokens(ids, **settings) for _ in range(args.repeats)]
            out, seconds = min(runs, key=lambda r: r[1])
            tokens = sum(map(len, out))
            rows.append((label, batch, tokens, seconds, tokens / seconds, compile_s))
            print(f"{label:>18} B={batch}: {tokens} tokens in {seconds:.3f}s = {tokens / seconds:.1f} tokens/s "
                  f"(first call {compile_s:.1f}s)", flush=True)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    name = device.device_kind.lower().replace(" ", "_") if device.platform == "gpu" else device.platform
    out_file = Path(args.out) if args.out else RESULTS / f"generate_{'h200' if 'h200' in name else name}.md"
    lines = [
        "# Generation speed through the Python API (`butler_jax.load('embedded').generate_tokens`)", "",
        f"- device: {device.device_kind} ({device.platform}); date: {datetime.date.today()}; commit: {commit}; "
        f"jax {jax.__version__}",
        f"- command: `python {' '.join(['bench/generate_speed.py', *(argv if argv is not None else sys.argv[1:])])}`",
        f"- SmolLM2-135M-Instruct ({args.dtype}), shipped predictor, budget `{args.budget}` (4 sinks + 16 recent, "
        f"layer 0 dense), prompt {args.context} WikiText-2 tokens per row, up to {args.max_new_tokens} new tokens "
        f"(greedy, stops at EOS); best of {args.repeats} after a compiling call; tokens/s counts every row's tokens "
        "and includes prefill.", "",
        "| method | batch | tokens | seconds | tokens/s | first call (s, compiles) |",
        "|---|---:|---:|---:|---:|---:|",
        *(f"| {m} | {b} | {t} | {s:.3f} | {r:.1f} | {c:.1f} |" for m, b, t, s, r, c in rows),
    ]
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text("\n".join(lines) + "\n")
    print(f"wrote {out_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
