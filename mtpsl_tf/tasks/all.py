"""Imports every task module so their registry entries exist."""

from mtpsl_tf.tasks import depth, edge, normal, saliency, semantic  # noqa: F401
from mtpsl_tf.tasks.registry import TASKS  # noqa: F401
