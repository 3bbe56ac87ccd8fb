"""Train a TokenButler predictor for a frozen Llama-family model, sharded over every device.

    python train.py --config configs/train_tiny.yaml [section.key=value ...] [--resume]

Writes checkpoints, metrics.jsonl, TensorBoard logs, config.yaml and summary.json under
`train.output_dir`. Multi-host: launch one process per host with JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID set (or under SLURM / Open MPI).
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML config (see configs/train_*.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.steps=10")
    args = parser.parse_args(argv)

    from butler_jax.config import ConfigError
    from butler_jax.train.config import load_run_config

    try:
        cfg = load_run_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2

    from butler_jax.train.mesh import maybe_initialize_distributed

    maybe_initialize_distributed()  # before anything touches the devices

    from butler_jax.train.checkpoint import CheckpointError
    from butler_jax.train.loop import NonFiniteLossError, train
    from butler_jax.weights import CheckpointError as WeightsError

    try:
        summary = train(cfg, resume=args.resume)
    except (ConfigError, CheckpointError, WeightsError, NonFiniteLossError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: summary.get(k) for k in ("steps", "loss", "accuracy", "hit_rate", "mean_tokens_per_s",
                                                   "devices", "mesh", "params_sharded", "checkpoint", "predictor")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
