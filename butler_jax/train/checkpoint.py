"""Orbax checkpoints of the train state: save every N steps, keep the last k, atomic, exact resume.

Orbax writes each step into a temporary folder and renames it when complete, so a process killed
mid-save leaves the previous checkpoint intact. A checkpoint holds the train state (step,
predictor params, optimizer state) and JSON metadata (data fingerprint, config).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from butler_jax.errors import CheckpointError


class Checkpoints:
    """Thin wrapper over `ocp.CheckpointManager` with the run's save / keep policy."""

    def __init__(self, directory: Path, save_every: int, keep: int) -> None:
        self.directory = directory.absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=save_every, create=True,
            enable_async_checkpointing=False,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict, force: bool = False) -> bool:
        """Save at `step` when the interval says so (or `force`); returns whether it saved."""
        return self._manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=force,
        )

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """(state placed with the shardings of `abstract_state`, metadata) of `step` or the latest."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory} to resume from; drop --resume "
                                  "to start a new run")
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with shardings, the restore target of `tree`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
