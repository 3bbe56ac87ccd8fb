"""Reading and writing tensor files (safetensors, PyTorch .bin/.pt) as numpy arrays.

bfloat16 is carried as `ml_dtypes.bfloat16` numpy arrays, so round trips are bit-exact.
Safetensors go through `safetensors.numpy` (no torch); torch is imported only for .bin/.pt files.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np

from butler_jax.errors import CheckpointError


def torch_to_numpy(tensor) -> np.ndarray:
    """A torch tensor -> numpy, bfloat16 kept as ml_dtypes.bfloat16 (bit-exact)."""
    import torch

    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def numpy_to_torch(array: np.ndarray):
    """numpy (incl. ml_dtypes.bfloat16) -> torch tensor, bit-exact."""
    import torch

    array = np.ascontiguousarray(array)
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(array.copy())


def load_torch_file(path: str | Path) -> object:
    """`torch.load(path, weights_only=True)` with a clear error for a truncated or bad file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / truncated archives
        raise CheckpointError(
            f"could not read {str(path)!r} as a PyTorch checkpoint ({type(exc).__name__}: {exc}); "
            "the file may be truncated or not a torch.save archive"
        ) from exc


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of one .safetensors file as numpy arrays."""
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"could not read safetensors file {str(path)!r}: {exc}") from exc


def write_safetensors(tensors: dict[str, np.ndarray], path: str | Path, metadata: dict | None = None) -> None:
    """Write numpy arrays (bf16 included) to a .safetensors file."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)


def read_state_dict_dir(directory: Path) -> dict[str, np.ndarray]:
    """Tensors of an HF model directory: sharded or single safetensors, else pytorch_model*.bin."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        tensors: dict[str, np.ndarray] = {}
        for shard in shards:
            if not (directory / shard).is_file():
                raise CheckpointError(f"shard {shard!r} listed in {index} is missing")
            tensors.update(read_safetensors(directory / shard))
        return tensors
    single = sorted(directory.glob("*.safetensors"))
    if single:
        tensors = {}
        for file in single:
            tensors.update(read_safetensors(file))
        return tensors
    bins = sorted(directory.glob("pytorch_model*.bin"))
    if bins:
        tensors = {}
        for file in bins:
            state = load_torch_file(file)
            tensors.update({k: torch_to_numpy(v) for k, v in state.items()})
        return tensors
    raise CheckpointError(
        f"no weights found in {str(directory)!r}: expected model.safetensors, "
        "model.safetensors.index.json + shards, or pytorch_model.bin"
    )
