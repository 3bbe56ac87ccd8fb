"""Exceptions raised while reading or converting checkpoints."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or holds missing / extra / misshaped tensors."""
