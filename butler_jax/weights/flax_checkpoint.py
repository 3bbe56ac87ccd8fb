"""butler-jax's own checkpoint format: a safetensors file of the flattened Flax parameter tree
("/"-joined paths, dtypes kept) beside a JSON file of the config that built it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from butler_jax.errors import CheckpointError
from butler_jax.weights.tensors import read_safetensors, write_safetensors


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """{"a": {"b": x}} -> {"a/b": x} (numpy)."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, path))
        else:
            flat[path] = np.asarray(value)
    return flat


def unflatten(flat: dict[str, Any]) -> dict:
    """Inverse of `flatten`."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def save_tree(params: dict, directory: str | Path, name: str, config: dict) -> Path:
    """Write `<name>.safetensors` + `<name>.json` into `directory`; returns the directory."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(flatten(params), out / f"{name}.safetensors")
    (out / f"{name}.json").write_text(json.dumps(config, indent=2, default=str))
    return out


def load_tree(directory: str | Path, name: str) -> tuple[dict, dict]:
    """(params tree, config dict) written by `save_tree`."""
    directory = Path(directory)
    weights, meta = directory / f"{name}.safetensors", directory / f"{name}.json"
    for path in (weights, meta):
        if not path.is_file():
            raise CheckpointError(f"{str(path)!r} does not exist; expected a butler-jax {name} checkpoint directory")
    return unflatten(read_safetensors(weights)), json.loads(meta.read_text())
