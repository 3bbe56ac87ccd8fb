"""Convert checkpoints between PyTorch formats and butler-jax's JAX format, both directions.

    python convert_torch.py llama-to-jax meta-llama/Llama-3.2-1B out/llama1b [--dtype bfloat16]
    python convert_torch.py jax-to-hf out/llama1b out/llama1b-hf [--tokenizer meta-llama/Llama-3.2-1B]
    python convert_torch.py jax-to-hf out/llama1b out/llama1b-butler --predictor out/pred   # a whole Butler model
    python convert_torch.py predictor-to-jax L3_1B_2k_1PC.pt out/pred --format v1 --model configs/llama-3.2-1b.yaml
    python convert_torch.py predictor-to-jax path/to/Llama-3.2-1B-Butler out/pred --format hf-butler
    python convert_torch.py predictor-to-jax L3_8Bi_d16_i512_pf4.pt out/pred --format longctx --model configs/llama-3.1-8b.yaml
    python convert_torch.py predictor-to-torch out/pred back.pt [--format v1|v2|hf-butler|longctx]

JAX format: a directory with `<name>.safetensors` (the Flax parameter tree flattened with "/"-joined
keys, dtypes kept) and `<name>.json` (the config): name "model" for the backbone, "predictor" for a
predictor (plus `torch_carried.safetensors`: tensors of the original file carried through unchanged,
e.g. the frozen q/k/v/o copies and the head predictor of a paper `.pt`).
`llama-to-jax` takes an HF directory or hub id of any supported family (Llama, Mistral, Qwen2/2.5,
Qwen3, Phi-3; chosen from config.json's model_type), a .gguf file or "embedded"; `jax-to-hf` takes a
JAX model directory or any of those and writes a directory `transformers` loads with
`from_pretrained`. An `hf-butler` predictor is written as one safetensors file of the
`model.layers.0.self_attn.sparse_*` tensors; merge it into a Butler repo's weights, and copy that
repo's remote-code modeling file yourself (butler-jax cannot redistribute it).

Every command writes into a fresh temporary path beside OUT and renames it onto OUT only when the
conversion succeeded, so a failed run leaves nothing half-written and no file of an older
conversion survives in OUT. OUT may not equal, lie inside, or contain SRC; an existing OUT is
refused unless `--force` (which replaces it; the source is never touched).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

from butler_jax.cli import add_debug_flag, run_cli
from butler_jax.config import ModelConfig, load_yaml, section
from butler_jax.errors import ConfigError
from butler_jax.weights import load_model, load_tokenizer, save_hf_directory
from butler_jax.weights.hf import cast_tree
from butler_jax.weights.model_checkpoint import is_jax_model_dir, load_jax_model, save_jax_model
from butler_jax.weights.predictor_torch import (FORMATS, cast_converted, load_jax_predictor, read_torch_predictor,
                                               save_jax_predictor, write_hf_butler_directory, write_torch_predictor)

DTYPES = ("float32", "bfloat16")


def _source_dtype(source: str) -> str:
    """The dtype an HF directory declares (bfloat16 or float32), float32 otherwise."""
    config = Path(source).expanduser() / "config.json"
    if config.is_file():
        raw = json.loads(config.read_text())
        return "bfloat16" if (raw.get("torch_dtype") or raw.get("dtype")) == "bfloat16" else "float32"
    return "float32"


def check_output(sources: list[str], out: str, force: bool) -> Path:
    """The resolved OUT, refused when it is, lies inside or contains a source, or exists without `force`."""
    target = Path(out).expanduser().resolve()
    for src in sources:
        source = Path(src).expanduser().resolve()
        if source.exists() and (target == source or source in target.parents or target in source.parents):
            raise ConfigError(f"output {out!r} would overwrite the source {src!r} (it is, lies inside, or contains it)",
                              fix="write to a path outside the source; --force never replaces the source")
    if target.exists() and not force:
        raise ConfigError(f"output {out!r} already exists", fix="choose a new path, or pass --force to replace it")
    return target


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def staged(target: Path) -> Iterator[Path]:
    """A fresh temporary path beside `target`, renamed onto it (replacing it) only if the body succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    _remove(target)
    os.replace(tmp, target)


def llama_to_jax(args: argparse.Namespace) -> str:
    cfg, params = load_model(args.src, args.dtype or _source_dtype(args.src))
    with staged(args.target) as tmp:
        save_jax_model(params, cfg, tmp)
    return f"wrote {args.out}: {cfg.num_hidden_layers}-layer {cfg.family}, dtype {cfg.dtype}, {_count(params):,} parameters"


def jax_to_hf(args: argparse.Namespace) -> str:
    cfg, params = load_jax_model(args.src) if is_jax_model_dir(args.src) else load_model(args.src, args.dtype or "float32")
    if args.dtype:
        cfg, params = dataclasses.replace(cfg, dtype=args.dtype), cast_tree(params, args.dtype)
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    if args.predictor:
        conv = load_jax_predictor(args.predictor)
        if args.dtype:
            conv = cast_converted(conv, args.dtype)
        with staged(args.target) as tmp:
            write_hf_butler_directory(params, cfg, conv, tmp, tokenizer)
        return f"wrote {args.out}: HF Butler directory, dtype {cfg.dtype}, {_count(params):,} backbone parameters + {conv.summary()}"
    with staged(args.target) as tmp:
        save_hf_directory(params, cfg, tmp, tokenizer)
    return f"wrote {args.out}: HF {cfg.family} directory, dtype {cfg.dtype}, {_count(params):,} parameters"


def predictor_to_jax(args: argparse.Namespace) -> str:
    mcfg = section(load_yaml(args.model), "model", ModelConfig) if args.model else None
    conv = read_torch_predictor(args.src, args.format, mcfg, args.dtype)
    with staged(args.target) as tmp:
        save_jax_predictor(conv, tmp)
    return f"wrote {args.out}: {conv.summary()}"


def predictor_to_torch(args: argparse.Namespace) -> str:
    conv = load_jax_predictor(args.src)
    if args.dtype:
        conv = cast_converted(conv, args.dtype)
    with staged(args.target) as tmp:
        write_torch_predictor(conv, tmp, args.format)
    return f"wrote {args.out}: {conv.summary()}"


def _count(params: dict) -> int:
    import jax

    return sum(a.size for a in jax.tree_util.tree_leaves(params))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, help_text in (("llama-to-jax", llama_to_jax, "HF (llama, mistral, qwen2, qwen3, phi3) / GGUF / embedded -> JAX directory"),
                                ("jax-to-hf", jax_to_hf, "JAX directory (or any model source) -> HF directory"),
                                ("predictor-to-jax", predictor_to_jax, "original TokenButler predictor -> JAX directory"),
                                ("predictor-to-torch", predictor_to_torch, "JAX predictor directory -> original format")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("src")
        p.add_argument("out")
        p.add_argument("--dtype", choices=DTYPES, help="cast the converted weights (default: keep)")
        p.add_argument("--force", "--overwrite", action="store_true", help="replace an existing OUT (never the source)")
        add_debug_flag(p)
        p.set_defaults(fn=fn)
        if name.startswith("predictor"):
            p.add_argument("--format", choices=FORMATS, required=name == "predictor-to-jax",
                           help="torch layout (predictor-to-torch default: the one it was converted from)")
        if name == "predictor-to-jax":
            p.add_argument("--model", help="YAML with a model: section giving the dims (not needed for an hf-butler directory)")
        if name == "jax-to-hf":
            p.add_argument("--tokenizer", help="tokenizer source to save alongside (HF dir, hub id, .gguf, embedded)")
            p.add_argument("--predictor", help="a JAX v2 predictor directory: write a whole HF Butler model "
                                               "(backbone + predictor + config)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sources = [args.src] + ([args.predictor] if getattr(args, "predictor", None) else [])
    args.target = check_output(sources, args.out, args.force)
    print(args.fn(args))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
