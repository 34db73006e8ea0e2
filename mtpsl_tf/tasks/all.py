"""The tasks registry, filled on first lookup (see TASKS' module list in tasks/registry.py)."""

from mtpsl_tf.tasks.registry import TASKS  # noqa: F401
