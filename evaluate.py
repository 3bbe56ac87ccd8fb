"""Evaluate TokenButler against dense attention and other KV-sparsity methods.

    python evaluate.py                                   # the embedded SmolLM2-135M, small default subset
    python evaluate.py --config configs/eval_full.yaml   # a full study
    python evaluate.py eval.methods=[dense,oracle] eval.budgets=[fixed_30pc,fixed_50pc]

Writes samples.jsonl (one line per sample; a rerun resumes), summary.csv, summary.md and PNG
plots into eval.output_dir, and prints the table. Errors print one line and exit 2 (--debug: traceback).
"""

from __future__ import annotations

import argparse
import sys

from butler_jax.cli import add_debug_flag, run_cli
from butler_jax.config import PROJECT_ROOT
from butler_jax.eval.cli import run_from_config

DEFAULT_CONFIG = str(PROJECT_ROOT / "configs" / "eval_default.yaml")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    args = add_debug_flag(parser).parse_args(argv)
    run_from_config(args.config, args.overrides)


if __name__ == "__main__":
    sys.exit(run_cli(main))
