"""The device mesh of sharded decoding, from the `mesh:` config section.

`mesh: {seq: N}` splits the KV cache (and the predictor's importance keys) into N contiguous
token ranges, one per device; `mesh: {seq: N, kv_heads: M}` also splits the KV heads over M
devices (N * M devices in all). Axis names are "seq" and "kv_heads". No `mesh:` section (or
seq = kv_heads = 1 without asking for it) means the unsharded decode path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from butler_jax.config import ModelConfig, from_dict
from butler_jax.errors import ConfigError

SEQ, HEADS = "seq", "kv_heads"


@dataclass(frozen=True)
class MeshConfig:
    """The `mesh:` section: devices along the sequence (`seq`) and along the KV heads (`kv_heads`)."""

    seq: int = 1
    kv_heads: int = 1

    def __post_init__(self) -> None:
        for name in ("seq", "kv_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"mesh.{name} must be a whole number of devices >= 1", value=value,
                                  fix=f"set mesh.{name}=N with N >= 1 (e.g. mesh: {{seq: 2}})")

    @property
    def devices(self) -> int:
        return self.seq * self.kv_heads

    @classmethod
    def parse(cls, text: str) -> "MeshConfig":
        """`seq=4` / `seq=2,kv_heads=2` (the --mesh option) -> MeshConfig."""
        pairs = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not value.strip().isdigit():
                raise ConfigError("--mesh takes axis=count pairs", value=text, fix="e.g. --mesh seq=4 or --mesh seq=2,kv_heads=2")
            pairs[key.strip()] = int(value)
        return from_dict(cls, pairs, "mesh")

    def check(self, cfg: ModelConfig, n_devices: int | None = None) -> None:
        """Raise ConfigError unless the model's KV heads split over kv_heads and enough devices exist."""
        if cfg.num_key_value_heads % self.kv_heads:
            raise ConfigError(f"mesh.kv_heads={self.kv_heads} does not divide the model's "
                              f"{cfg.num_key_value_heads} KV heads", value=self.kv_heads,
                              fix=f"choose a divisor of {cfg.num_key_value_heads} for mesh.kv_heads")
        have = len(jax.devices()) if n_devices is None else n_devices
        if self.devices > have:
            raise ConfigError(f"mesh seq={self.seq} x kv_heads={self.kv_heads} needs {self.devices} devices, "
                              f"JAX sees {have}", value=self.devices,
                              fix="lower mesh.seq / mesh.kv_heads (or on CPU set "
                                  "XLA_FLAGS=--xla_force_host_platform_device_count=N before starting)")

    def build(self, devices: Sequence[jax.Device] | None = None) -> Mesh:
        """A Mesh of shape (seq, kv_heads) over the first seq * kv_heads devices."""
        devices = list(jax.devices() if devices is None else devices)[: self.devices]
        if len(devices) < self.devices:
            raise ConfigError(f"mesh needs {self.devices} devices, {len(devices)} given", value=len(devices),
                              fix="pass more devices or shrink the mesh")
        return Mesh(np.asarray(devices, dtype=object).reshape(self.seq, self.kv_heads), (SEQ, HEADS))


def mesh_config(data: dict) -> MeshConfig | None:
    """The `mesh:` section of a loaded config, or None when there is none (the unsharded path)."""
    body = data.get("mesh")
    return None if not body else from_dict(MeshConfig, body, "mesh")


def on_mesh(fn, mesh: Mesh, in_specs, out_specs):
    """`shard_map` of fn over `mesh` (jax.shard_map where it exists, else jax.experimental's);
    replication is not checked (tokens are equal on every device by construction: merged
    attention is an all-reduce)."""
    if hasattr(jax, "shard_map"):
        return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    from jax.experimental.shard_map import shard_map  # jax < 0.6

    return shard_map(fn, mesh, in_specs, out_specs, check_rep=False)
