"""DeepLab-v3 ASPP task heads, as Multi-Task-Learning-PyTorch's `models/aspp.py` (DeepLabHead)
plus the upsampling of `MultiTaskModel.forward` and our task activation.

Per task, on the backbone feature `[B,h,w,Cin]` (layer4 of the dilated ResNet, stride 8):

    ASPP: five parallel branches of `aspp_channels` (256) each, concatenated
        conv1x1 -> BN -> ReLU
        conv3x3 dilation r -> BN -> ReLU        for r in atrous_rates (12, 24, 36)
        global average pool -> conv1x1 -> BN -> ReLU -> broadcast back to h x w
      then project: conv1x1 (5*256 -> 256) -> BN -> ReLU -> Dropout(0.5)
    conv3x3 (256 -> 256) -> BN -> ReLU
    conv1x1 (256 -> channels), with bias
    bilinear upsampling to the input size (F.interpolate(mode="bilinear"), align_corners=False)
    activation (heads.ACTIVATIONS), in float32

All convs are stride 1 with PyTorch padding `dilation * (k // 2)` on every side, which is what
Keras' "same" padding does for stride 1 and odd kernels, so "same" is exact here. The convs
have no bias except the last one; initialisers are PyTorch's `nn.Conv2d` defaults
(kaiming-uniform a=sqrt(5): U(+-1/sqrt(fan_in)) for kernel and bias); BatchNorm is
`layers.BatchNorm` (PyTorch semantics, eps 1e-5, momentum 0.1).
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
import tensorflow as tf

from mtpsl_tf.models.dilated_conv import DilatedConv2D
from mtpsl_tf.models.heads import ACTIVATIONS, check_activation
from mtpsl_tf.models.layers import PACKAGE, BatchNorm

ATROUS_RATES = (12, 24, 36)
ASPP_CHANNELS = 256
DROPOUT = 0.5


def torch_default_kernel_initializer() -> keras.initializers.Initializer:
    """`nn.Conv2d`'s default kernel init, kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def torch_default_bias_initializer(fan_in: int) -> keras.initializers.Initializer:
    """`nn.Conv2d`'s default bias init, U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def channels_shape(channels) -> tuple:
    """An NHWC shape with only the channels known (all our variables depend on those only)."""
    return (None, None, None, int(channels))


def resize_bilinear(x, size):
    """`F.interpolate(x, size, mode="bilinear", align_corners=False)` in NHWC.

    `tf.image.resize(method="bilinear", antialias=False)` uses half-pixel centres and clamps
    source coordinates to the image like PyTorch's align_corners=False, so both compute the
    same interpolation (up to float rounding). Returns float32.
    """
    return tf.image.resize(tf.cast(x, tf.float32), size, method="bilinear", antialias=False)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ASPPConv(keras.layers.Layer):
    """conv (no bias, stride 1, PyTorch padding) -> BatchNorm -> ReLU.

    Args:
        filters: output channels.
        kernel_size: 1 or 3.
        dilation_rate: dilation of the conv (its padding is dilation_rate * (kernel_size // 2)).
    """

    def __init__(self, filters: int, kernel_size: int = 1, dilation_rate: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.dilation_rate = dilation_rate
        self.conv = DilatedConv2D(
            filters, kernel_size, padding="same", dilation_rate=dilation_rate, use_bias=False,
            kernel_initializer=torch_default_kernel_initializer(), name="conv")
        self.bn = BatchNorm(name="bn")

    def build(self, input_shape):
        self.conv.build(channels_shape(input_shape[-1]))
        self.bn.build(channels_shape(self.filters))

    def call(self, x, training=False):
        return tf.nn.relu(self.bn(self.conv(x), training=training))

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, dilation_rate=self.dilation_rate)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class ASPP(keras.layers.Layer):
    """Atrous spatial pyramid pooling (DeepLab-v3), `[B,h,w,Cin] -> [B,h,w,channels]`.

    Args:
        channels: width of every branch and of the projection (256 in the reference).
        atrous_rates: dilations of the three 3x3 branches ((12, 24, 36) in the reference).
        dropout: dropout rate after the projection (0.5), active in training only.
    """

    def __init__(self, channels: int = ASPP_CHANNELS, atrous_rates: Sequence[int] = ATROUS_RATES,
                 dropout: float = DROPOUT, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.atrous_rates = [int(r) for r in atrous_rates]
        self.dropout = dropout
        # Branch order = the reference's `convs` ModuleList (concatenation order matters).
        self.branches = [ASPPConv(channels, 1, name="branch0")] + [
            ASPPConv(channels, 3, rate, name=f"branch{i + 1}") for i, rate in enumerate(self.atrous_rates)
        ]
        self.pooling = ASPPConv(channels, 1, name="pooling")
        self.project = ASPPConv(channels, 1, name="project")
        self.drop = keras.layers.Dropout(dropout, name="dropout")

    def build(self, input_shape):
        for branch in self.branches + [self.pooling]:
            branch.build(input_shape)
        self.project.build(channels_shape(self.channels * (len(self.branches) + 1)))

    def call(self, x, training=False):
        outs = [branch(x, training=training) for branch in self.branches]
        # AdaptiveAvgPool2d(1) (mean in float32), conv, then back to h x w. Bilinear
        # upsampling of a 1x1 map is the constant map, so broadcasting is exact. A product
        # with ones, not TILE: LiteRT's XNNPACK delegate runs MUL but not TILE.
        pooled = tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2], keepdims=True)
        pooled = self.pooling(pooled, training=training)
        outs.append(pooled * tf.ones_like(x[..., :1], dtype=pooled.dtype))
        y = self.project(tf.concat(outs, axis=-1), training=training)
        return self.drop(y, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, atrous_rates=list(self.atrous_rates), dropout=self.dropout)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class DeepLabHead(keras.layers.Layer):
    """One task's head: ASPP -> conv3x3-BN-ReLU -> conv1x1 -> bilinear upsampling -> activation.

    Args:
        channels: output channels of the task.
        activation: a key of `heads.ACTIVATIONS`, applied in float32 after the upsampling
            (the reference upsamples logits; its losses apply softmax / normalisation after).
        aspp_channels: ASPP / hidden width (256).
        atrous_rates: the ASPP dilations.
        dropout: the ASPP projection's dropout rate.

    Call: `head(feature [B,h,w,Cin], output_size=(H, W), training)` -> `[B,H,W,channels]`
    float32.
    """

    def __init__(self, channels: int, activation: str, aspp_channels: int = ASPP_CHANNELS,
                 atrous_rates: Sequence[int] = ATROUS_RATES, dropout: float = DROPOUT, **kwargs):
        super().__init__(**kwargs)
        check_activation(activation)
        self.channels = channels
        self.activation = activation
        self.aspp_channels = aspp_channels
        self.atrous_rates = [int(r) for r in atrous_rates]
        self.dropout = dropout
        self.aspp = ASPP(aspp_channels, self.atrous_rates, dropout, name="aspp")
        self.hidden = ASPPConv(aspp_channels, 3, name="hidden")
        self.classifier = keras.layers.Conv2D(
            channels, 1, use_bias=True, kernel_initializer=torch_default_kernel_initializer(),
            bias_initializer=torch_default_bias_initializer(aspp_channels), name="classifier")

    def build(self, x_shape, output_size_shape=None):
        self.aspp.build(x_shape)
        self.hidden.build(channels_shape(self.aspp_channels))
        self.classifier.build(channels_shape(self.aspp_channels))

    def call(self, x, output_size, training=False):
        x = self.hidden(self.aspp(x, training=training), training=training)
        logits = resize_bilinear(self.classifier(x), output_size)
        return ACTIVATIONS[self.activation](logits)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, activation=self.activation, aspp_channels=self.aspp_channels,
                      atrous_rates=list(self.atrous_rates), dropout=self.dropout)
        return config
