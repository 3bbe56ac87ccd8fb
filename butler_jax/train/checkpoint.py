"""Orbax checkpoints of the train state: save every N steps, keep the last k, atomic, exact resume.

Orbax writes each step into a temporary folder and renames it when complete, so a process killed
mid-save leaves the previous checkpoint intact. A checkpoint holds the train state (step,
predictor params, optimizer state) and JSON metadata (data fingerprint, config). Resume takes the
newest checkpoint that restores: a step folder that does not (damaged, or junk such as an empty
`checkpoints/500/`) is renamed `<step>.unrestorable` and reported, and the next older one is tried.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

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

    def restore_newest_good(self, abstract_state: Any, check_meta: Callable[[dict], None]) -> tuple[Any, dict]:
        """(state, metadata) of the newest step that restores, setting aside (and naming) those that do not.

        `check_meta(meta)` runs before the state is read; its errors (a changed setting, other data)
        are the user's to fix and propagate: they do not make a checkpoint count as damaged.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory} to resume from",
                                  fix="drop --resume to start a new run")
        skipped = []
        for step in steps:
            try:
                meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            except Exception as exc:  # noqa: BLE001 - any failure to read a step means it is unusable
                skipped.append(self._set_aside(step, exc))
                continue
            check_meta(meta)
            try:
                state = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())).state
            except Exception as exc:  # noqa: BLE001
                skipped.append(self._set_aside(step, exc))
                continue
            if skipped:
                print(f"warning: resuming from step {step}; skipped checkpoints that do not restore: "
                      f"{'; '.join(skipped)}", file=sys.stderr)
            return state, meta
        raise CheckpointError(f"no checkpoint in {self.directory} restores ({'; '.join(skipped)})",
                              fix="drop --resume and set train.output_dir to a new folder to start over")

    def _set_aside(self, step: int, exc: Exception) -> str:
        """Rename an unusable step folder out of orbax's view; returns a one-line note of what was skipped."""
        folder = self.directory / str(step)
        target = folder.with_name(f"{step}.unrestorable")
        if folder.is_dir() and not target.exists():
            folder.rename(target)
        self._manager.reload()
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        return f"step {step} ({reason}; moved to {target.name})"

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with shardings, the restore target of `tree`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
