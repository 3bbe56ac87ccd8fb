"""Sharded long-context decode: the KV cache and the importance keys split along the sequence
(and optionally the KV heads) over a device mesh, exact top-K across devices, partial attention
merged by log-sum-exp. `mesh.py` (the `mesh:` section), `local.py` (a device's view inside
shard_map), `select.py`, `attention.py`, `placement.py`, `decode.py` (the decode-loop hook)."""
