"""Backbone registry: `BACKBONES.get("segnet")(heads=..., ...)`."""

from mtpsl_tf.registry import Registry

BACKBONES: Registry = Registry("backbone")
