"""One error policy for every command-line tool: `sys.exit(run_cli(main))`.

A `ButlerError` prints as one line (`error: what (got value); fix`) on stderr and exits with
status 2, the same status argparse uses for bad arguments. `--debug` anywhere on the command line
re-raises it with its traceback instead. Other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from butler_jax.errors import ButlerError

EXIT_USER_ERROR = 2


def add_debug_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Declare `--debug` (handled by `run_cli`) so that `--help` lists it and parsing accepts it."""
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def run_cli(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Call `main(argv)` and turn the project's errors into one stderr line and exit status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(args) or 0
    except ButlerError as exc:
        if "--debug" in args:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
