"""Generate text: `python -m butler_jax.generate --prompt "..." [--method tokenbutler --budget sparsity=0.5]`.

Uses the embedded SmolLM2-135M-Instruct and its shipped predictor unless --config / --model /
--predictor name others. Prints each continuation and the tokens/s of the call (with --warmup:
of a second, compiled call). `--mesh seq=N[,kv_heads=M]` (or the config's `mesh:` section)
decodes on a device mesh (butler_jax/sharding).
"""

from __future__ import annotations

import argparse

from butler_jax.cli import add_debug_flag, run_cli
from butler_jax.config import ModelConfig, load_yaml, section
from butler_jax.errors import ConfigError
from butler_jax.sampling import SamplingConfig
from butler_jax.sharding.mesh import MeshConfig, mesh_config
from butler_jax.sparsity import METHODS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", action="append", required=True, help="repeat for a batch of prompts")
    parser.add_argument("--config", default="smollm2-135m", help="YAML file or packaged config name (default smollm2-135m)")
    parser.add_argument("--model", default=None, help="model source (embedded, .gguf, HF directory or hub id); default: the config's")
    parser.add_argument("--method", default="dense", choices=METHODS)
    parser.add_argument("--budget", default="fixed_50pc", help="tokens=N (or N), keep=F, sparsity=F or fixed_XXpc")
    parser.add_argument("--predictor", default="auto",
                        help="predictor checkpoint directory, 'shipped' (paper predictor), 'shipped-longctx', 'none', or 'auto' (config's, else shipped for the embedded model)")
    parser.add_argument("--predict-interval", type=int, default=None, help="tokenbutler: predict every N decode steps")
    parser.add_argument("--neighbor-fetch", action="store_true", help="tokenbutler: widen each prediction's tokens to their neighbours")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-chat", action="store_true", help="do not wrap prompts in the chat template")
    parser.add_argument("--mesh", default=None, help="decode on a device mesh: seq=N[,kv_heads=M] (default: the config's mesh: section)")
    parser.add_argument("--warmup", action="store_true", help="run once to compile, then time a second run")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.dtype=bfloat16 sparsity.n_window=32")
    return add_debug_flag(parser)


def sparsity_options(args: argparse.Namespace) -> dict:
    """The tokenbutler-only settings given on the command line (others keep the config's)."""
    options = {"predict_interval": args.predict_interval} if args.predict_interval is not None else {}
    return {**options, "neighbor_fetch": True} if args.neighbor_fetch else options


def check_arguments(args: argparse.Namespace) -> None:
    """Sampling and length arguments, checked before any weights load (ConfigError naming the value)."""
    SamplingConfig(temperature=args.temperature, top_p=args.top_p)
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens {args.max_new_tokens} must be >= 1")
    data = load_yaml(args.config, args.overrides)
    model = section(data, "model", ModelConfig)
    mesh = MeshConfig.parse(args.mesh) if args.mesh else mesh_config(data)
    if mesh is not None:
        mesh.check(model)
    if 1 + args.max_new_tokens > model.max_position_embeddings:
        raise ConfigError(f"a prompt of at least 1 token plus --max-new-tokens {args.max_new_tokens} exceeds the "
                          f"model's {model.max_position_embeddings} positions (model.max_position_embeddings)",
                          fix="lower --max-new-tokens")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_arguments(args)
    from butler_jax.api import load

    predictor = None if args.method != "tokenbutler" else args.predictor
    mesh = MeshConfig.parse(args.mesh) if args.mesh else None
    model = load(args.model, config=args.config, predictor=predictor, overrides=args.overrides, mesh=mesh)
    options = dict(method=args.method, budget=args.budget, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   top_p=args.top_p, seed=args.seed, chat=not args.no_chat, **sparsity_options(args))
    out = model.generate(args.prompt, **options)
    if args.warmup:
        out = model.generate(args.prompt, **options)
    for prompt, text in zip(args.prompt, out.texts):
        print(f"### {prompt}\n{text}\n")
    when = "compiled" if args.warmup else "including compilation"
    print(f"[{args.method}: {out.num_tokens} tokens in {out.seconds:.2f}s, {out.tokens_per_s:.1f} tokens/s ({when})]")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
