"""Device mesh ("data", "fsdp") and the shardings of the train step.

Parameters and optimizer state are sharded over "fsdp" along their largest axis that the fsdp
size divides (replicated otherwise); the batch is split over data x fsdp; the frozen LLM is
replicated or sharded like the predictor. The same code runs on 1 to N devices, one or many hosts.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from butler_jax.config import ConfigError
from butler_jax.train.config import TrainConfig

BATCH_AXES = ("data", "fsdp")
_WORLD_SIZE_ENV = ("JAX_NUM_PROCESSES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def maybe_initialize_distributed() -> bool:
    """Call `jax.distributed.initialize()` when the environment describes a multi-process job.

    Triggers on JAX_COORDINATOR_ADDRESS, or a world size > 1 in JAX_NUM_PROCESSES / SLURM_NTASKS /
    OMPI_COMM_WORLD_SIZE; JAX then reads coordinator, process count and id from the environment.
    Returns whether it initialised.
    """
    multi = os.environ.get("JAX_COORDINATOR_ADDRESS") or any(
        int(os.environ.get(k, "1") or 1) > 1 for k in _WORLD_SIZE_ENV
    )
    if multi:
        jax.distributed.initialize()
    return bool(multi)


def mesh_shape(cfg: TrainConfig, n_devices: int) -> tuple[int, int]:
    """(data, fsdp) sizes for `n_devices`, resolving one -1 to the devices left over."""
    data, fsdp = cfg.mesh_data, cfg.mesh_fsdp
    if data == -1:
        data = n_devices // fsdp if n_devices % fsdp == 0 else 0
    if fsdp == -1:
        fsdp = n_devices // data if n_devices % data == 0 else 0
    if data * fsdp != n_devices:
        raise ConfigError(
            f"train.mesh_data={cfg.mesh_data} x train.mesh_fsdp={cfg.mesh_fsdp} does not fit the "
            f"{n_devices} devices JAX sees; set one of them to -1 or make the product {n_devices}"
        )
    return data, fsdp


def make_mesh(cfg: TrainConfig, devices: list | None = None) -> Mesh:
    """A 2-D mesh over all (or the given) devices with axes ("data", "fsdp")."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(cfg, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), BATCH_AXES)


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """Shard the largest axis divisible by `fsdp` (first on ties); replicate if none or fsdp == 1."""
    if fsdp == 1:
        return P()
    candidates = [(size, -axis) for axis, size in enumerate(shape) if size % fsdp == 0 and size >= fsdp]
    if not candidates:
        return P()
    _, neg_axis = max(candidates)
    spec: list[Any] = [None] * len(shape)
    spec[-neg_axis] = "fsdp"
    return P(*spec)


def fsdp_shardings(tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for every array leaf of `tree` (arrays or ShapeDtypeStructs)."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(np.shape(x)), fsdp)), tree)


def replicated(tree: Any, mesh: Mesh) -> Any:
    """Fully replicated NamedShardings for every leaf of `tree`."""
    return jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """[B, T] batches: rows split over data x fsdp."""
    return NamedSharding(mesh, P(BATCH_AXES, None))


def check_batch(batch_size: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the data x fsdp devices."""
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % n:
        raise ConfigError(f"data.batch_size={batch_size} must be a multiple of the {n} devices "
                          f"(mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']})")


def put_global(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Place a host array that every process holds in full as a global sharded array."""
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def put_tree(tree: Any, shardings: Any) -> Any:
    """`put_global` over a pytree of host arrays and matching shardings."""
    return jax.tree.map(lambda x, s: put_global(np.asarray(x), s), tree, shardings)
