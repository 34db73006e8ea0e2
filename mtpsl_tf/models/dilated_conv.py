"""Dilated convolutions that LiteRT's converter turns into ONE CONV_2D with dilation factors.

TensorFlow runs a dilated `keras.layers.Conv2D` (through `tf.nn.convolution`) as
SPACE_TO_BATCH_ND -> CONV_2D -> BATCH_TO_SPACE_ND. LiteRT's converter folds that triple back
into a dilated CONV_2D only in simple cases; the ResNet-18+ASPP heads' triples stay (their
SPACE_TO_BATCH_ND is shared by the five heads' convs of one rate), and the XNNPACK delegate
takes neither SPACE_TO_BATCH_ND nor BATCH_TO_SPACE_ND, so each ASPP became its own partition
between builtin kernels. `DilatedConv2D(dilation_ops="direct")` calls the Conv2D op with its
`dilations` attribute instead, which converts to one CONV_2D (dilation_h/w_factor) that
XNNPACK runs. The values are the same convolution (summation order aside).

`direct_dilation(network)` is the LiteRT layer form (`models.registry.LITERT_FORMS`) that
switches every `DilatedConv2D` of a network to it while the export traces the network.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from mtpsl_tf.models.layers import PACKAGE, layers_switched
from mtpsl_tf.models.registry import LITERT_FORMS

DILATION_OPS = ("space_to_batch", "direct")


@keras.saving.register_keras_serializable(package=PACKAGE)
class DilatedConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` (same arguments) with a choice of how a dilation > 1 is computed.

    Args:
        dilation_ops: "space_to_batch" (default, training: TensorFlow's own lowering) or
            "direct" (inference / export: the Conv2D op with `dilations`, one LiteRT CONV_2D).
            Undilated convolutions are the same either way.

    Call: `[B,H,W,Cin] -> [B,H',W',filters]` as Conv2D.
    """

    def __init__(self, *args, dilation_ops: str = "space_to_batch", **kwargs):
        super().__init__(*args, **kwargs)
        if dilation_ops not in DILATION_OPS:
            raise ValueError(f"dilation_ops must be one of {DILATION_OPS}, got {dilation_ops!r}")
        self.dilation_ops = dilation_ops

    def convolution_op(self, inputs, kernel):
        if self.dilation_ops == "direct" and max(self.dilation_rate) > 1:
            if self.data_format != "channels_last":
                raise ValueError(f"{self.name}: dilation_ops='direct' needs channels_last, got {self.data_format}")
            return tf.nn.conv2d(inputs, tf.cast(kernel, inputs.dtype), strides=self.strides,
                                padding=self.padding.upper(), dilations=self.dilation_rate)
        return super().convolution_op(inputs, kernel)

    def get_config(self):
        config = super().get_config()
        config.update(dilation_ops=self.dilation_ops)
        return config


@LITERT_FORMS.register("direct_dilation")
@contextlib.contextmanager
def direct_dilation(network: keras.layers.Layer, precision: str = "float32"):
    """Within the block every dilated `DilatedConv2D` of `network` uses `dilation_ops="direct"`
    (trace the network inside it), for every `precision`; restored afterwards. Yields how many
    were switched."""
    with layers_switched(network, DilatedConv2D, "dilation_ops", "direct",
                         keep=lambda conv: max(conv.dilation_rate) > 1) as count:
        yield count
