"""The methods registry, filled on first lookup (see METHODS' module list in methods/base.py)."""

from mtpsl_tf.methods.base import METHODS  # noqa: F401
