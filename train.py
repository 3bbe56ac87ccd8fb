"""Train a TokenButler predictor for a frozen Llama-family model, sharded over every device.

    python train.py --config configs/train_tiny.yaml [section.key=value ...] [--resume | --export] [--debug]

Writes checkpoints, metrics.jsonl, TensorBoard logs, config.yaml and summary.json under
`train.output_dir`. Multi-host: launch one process per host with JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID set (or under SLURM / Open MPI).
"""

from __future__ import annotations

import argparse
import json
import sys

from butler_jax.cli import add_debug_flag, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML config (see configs/train_*.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint that restores")
    parser.add_argument("--export", action="store_true",
                        help="write the newest checkpoint's predictor to <output_dir>/predictor-step<N>/ and stop "
                             "(no training, no data read; the run's settings are checked as for --resume)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.steps=10")
    args = add_debug_flag(parser).parse_args(argv)

    from butler_jax.train.config import load_run_config

    cfg = load_run_config(args.config, args.overrides)  # every check before a device or file is touched

    from butler_jax.train.mesh import maybe_initialize_distributed

    maybe_initialize_distributed()  # before anything touches the devices

    from butler_jax.train.loop import export_checkpoint, train

    if args.export and args.resume:
        parser.error("--export and --resume exclude each other (--export trains nothing)")
    summary = export_checkpoint(cfg) if args.export else train(cfg, resume=args.resume)
    keys = ("steps", "loss", "accuracy", "hit_rate", "mean_tokens_per_s", "devices", "mesh", "params_sharded",
            "checkpoint", "predictor")
    print(json.dumps({k: summary[k] for k in keys if k in summary}))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
