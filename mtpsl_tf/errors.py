"""Errors a run can end with that are no bug of ours (no TensorFlow import: the command-line
entry points catch them before TensorFlow loads)."""


class NonFiniteLossError(RuntimeError):
    """Training stopped: too many consecutive steps had a non-finite loss or gradient, or the
    weights became non-finite (nothing non-finite is ever checkpointed)."""
