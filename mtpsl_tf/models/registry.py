"""Backbone registry: `BACKBONES.get("segnet")(heads=..., ...)`."""

from mtpsl_tf.registry import Registry

# One line per backbone module (see mtpsl_tf/registry.py).
BACKBONES: Registry = Registry("backbone", modules=(
    "mtpsl_tf.models.segnet",
    "mtpsl_tf.models.segnet_mtan",
    "mtpsl_tf.models.resnet",
))
