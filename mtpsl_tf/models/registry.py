"""Backbone registry: `BACKBONES.get("segnet")(heads=..., ...)`; LiteRT layer forms:
`LITERT_FORMS.get("direct_dilation")(network)`."""

from mtpsl_tf.registry import Registry

# One line per backbone module (see mtpsl_tf/registry.py).
BACKBONES: Registry = Registry("backbone", modules=(
    "mtpsl_tf.models.segnet",
    "mtpsl_tf.models.segnet_mtan",
    "mtpsl_tf.models.resnet",
    "mtpsl_tf.models.tiny",
))

# Inference-only layer forms the exporter traces the LiteRT formats with (one line per module):
# each entry is `form(network, precision) -> context manager` that switches the network's
# layers to ops the XNNPACK delegate runs at that LiteRT precision ("float32", "float16",
# "int8"), with the same outputs up to float rounding, and restores them.
LITERT_FORMS: Registry = Registry("LiteRT layer form", modules=(
    "mtpsl_tf.models.dilated_conv",
    "mtpsl_tf.models.logit_heads",
))
