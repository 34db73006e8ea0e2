"""Per-task prediction heads: conv3x3(f0->f0) then conv1x1 -> channels, then an activation."""

from __future__ import annotations

import keras
import tensorflow as tf

from mtpsl_tf.models.layers import PACKAGE, conv2d


def _l2_normalize(x):
    # The reference divides by the plain L2 norm (no epsilon).
    return x / tf.norm(x, axis=-1, keepdims=True)


ACTIVATIONS = {
    "log_softmax": lambda x: tf.nn.log_softmax(x, axis=-1),
    "linear": tf.identity,
    "l2_normalize": _l2_normalize,
    "sigmoid": tf.sigmoid,
}


def check_activation(activation: str) -> None:
    """Raises ValueError unless `activation` is a key of ACTIVATIONS."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown head activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")


@keras.saving.register_keras_serializable(package=PACKAGE)
class TaskHead(keras.layers.Layer):
    """conv3x3 (width) -> conv1x1 (channels) -> activation, output in float32.

    Args:
        width: channels of the intermediate conv (SegNet's f0).
        channels: output channels (classes for segmentation, 1 for depth, 3 for normals).
        activation: a key of ACTIVATIONS; applied in float32 for numerical safety under
            mixed precision.
    """

    def __init__(self, width: int, channels: int, activation: str, **kwargs):
        super().__init__(**kwargs)
        check_activation(activation)
        self.width = width
        self.channels = channels
        self.activation = activation
        self.hidden = conv2d(width, 3, name="conv3x3")
        self.out = conv2d(channels, 1, name="conv1x1")

    def call(self, x):
        logits = tf.cast(self.out(self.hidden(x)), tf.float32)
        return ACTIVATIONS[self.activation](logits)

    def get_config(self):
        config = super().get_config()
        config.update(width=self.width, channels=self.channels, activation=self.activation)
        return config
