"""The project's exception types, in one place.

Every error the project raises on purpose is a `ButlerError`: it says what is wrong, which value
is wrong, and how to fix it. The command-line tools print it as one line and exit with status 2
(`butler_jax.cli.run_cli`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any

_UNSET = object()


class ButlerError(Exception):
    """A problem the user can fix: `what` is wrong, the offending `value`, and the `fix`.

    `ButlerError("message")` (one sentence naming the value and the fix) and
    `ButlerError("what", value=v, fix="do this")` give the same one-line form.
    """

    def __init__(self, what: str, *, value: Any = _UNSET, fix: str = "") -> None:
        self.what, self.value, self.fix = what, value, fix
        super().__init__(self.line())

    def line(self) -> str:
        """The one-line message: `what (got value); fix`."""
        text = self.what
        if self.value is not _UNSET:
            text += f" (got {self.value!r})"
        return f"{text}; {self.fix}" if self.fix else text


class ConfigError(ButlerError, ValueError):
    """A configuration value or command-line argument is missing, unknown or out of range."""


class CheckpointError(ButlerError, ValueError):
    """A checkpoint is missing, unreadable, would be overwritten, or holds missing / extra / misshaped tensors."""


class InputError(ButlerError, ValueError):
    """Input data (a text file, a JSONL file, prompt tokens) cannot be used as given."""


class NonFiniteLossError(ButlerError, RuntimeError):
    """The loss or gradient norm became NaN / inf; the run stopped without saving that state."""
