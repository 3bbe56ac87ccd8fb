"""Benchmarks: run from the repo root as modules, e.g. `python -m bench.select_topk`."""
