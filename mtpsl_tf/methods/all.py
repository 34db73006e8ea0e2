"""Imports every method module so their registry entries exist."""

from mtpsl_tf.methods import mtpsl, supervised  # noqa: F401
from mtpsl_tf.methods.base import METHODS  # noqa: F401
