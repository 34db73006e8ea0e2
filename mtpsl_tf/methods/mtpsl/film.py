"""Layers of the MTPSL mapping network: per-item BatchNorm, the task-specific input block and
the FiLM-conditioned conv block (SPEC section 5). Tensors are NHWC."""

from __future__ import annotations

import keras
import tensorflow as tf

from mtpsl_tf.models.layers import conv2d


def as_item_pair_index(pair_idx, num_items) -> tf.Tensor:
    """Scalar or `[N]` pair index -> int32 `[N]`."""
    pair_idx = tf.convert_to_tensor(pair_idx)
    pair_idx = tf.cast(pair_idx, tf.int32)
    if pair_idx.shape.rank == 0:
        return tf.fill(tf.reshape(num_items, [1]), pair_idx)
    if pair_idx.shape.rank != 1:
        raise ValueError(f"pair index must be a scalar or a [N] vector, got shape {pair_idx.shape}")
    return pair_idx


def conv3x3(filters: int, name: str, dtype) -> keras.layers.Conv2D:
    """The reference's 3x3 conv (bias, 'same' padding, Xavier-normal, zero bias)."""
    return conv2d(filters, 3, name=name, dtype=dtype)


def max_pool_2x2(x: tf.Tensor) -> tf.Tensor:
    return tf.nn.max_pool2d(x, ksize=2, strides=2, padding="VALID")


@keras.saving.register_keras_serializable(package="mtpsl_tf")
class ItemBatchNorm(keras.layers.Layer):
    """BatchNorm whose training-mode statistics are per item: `[N, H, W, C] -> [N, H, W, C]`.

    training=True: mean and biased variance over (H, W) of each item and channel (what PyTorch's
    BatchNorm2d computes when called on a batch of one item), then `* gamma + beta`.
    training=False: the running statistics `moving_mean` / `moving_variance`.

    The running statistics are NOT updated in training mode: the MTPSL mapping net only ever runs
    in training mode, so they are never read by the method; they exist so that the authors'
    checkpoints load and save losslessly (and inference mode behaves like PyTorch's eval mode).
    """

    def __init__(self, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=(channels,), initializer="zeros", trainable=False
        )
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=(channels,), initializer="ones", trainable=False
        )
        super().build(input_shape)

    def call(self, inputs, training=None):
        if training:
            mean, variance = tf.nn.moments(inputs, axes=[1, 2], keepdims=True)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        normalised = (inputs - mean) * tf.math.rsqrt(variance + self.epsilon)
        return normalised * self.gamma + self.beta

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package="mtpsl_tf")
class InputConvBlock(keras.layers.Layer):
    """Task-specific input layer: conv3x3 -> per-item BatchNorm -> ReLU.

    `[N, H, W, C_t] -> [N, H, W, filters]`.
    """

    def __init__(self, filters: int, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.epsilon = epsilon
        self.conv = conv3x3(filters, name="conv", dtype=self.dtype_policy)
        self.bn = ItemBatchNorm(epsilon=epsilon, name="bn", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build(tuple(input_shape[:-1]) + (self.filters,))
        super().build(input_shape)

    def call(self, inputs, training=None):
        return tf.nn.relu(self.bn(self.conv(inputs), training=training))

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package="mtpsl_tf")
class FiLM(keras.layers.Layer):
    """FiLM tables alone: `x [N,H,W,channels] * gamma[:, k_n] + beta[:, k_n]`, k_n = pair_idx[n].

    `gamma` (init 1) and `beta` (init 0) are `[channels, num_pairs]`, as in `FiLMConvBlock`;
    encoders whose FiLM does not follow a plain conv -> BN block (ResNet blocks) use this.
    """

    def __init__(self, channels: int, num_pairs: int, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.num_pairs = num_pairs

    def build(self, input_shape=None):
        table_shape = (self.channels, self.num_pairs)
        self.gamma = self.add_weight(name="gamma", shape=table_shape, initializer="ones")
        self.beta = self.add_weight(name="beta", shape=table_shape, initializer="zeros")
        super().build(input_shape)

    def call(self, inputs, pair_idx):
        idx = as_item_pair_index(pair_idx, tf.shape(inputs)[0])
        # Each item's column: [C, N] -> [N, 1, 1, C].
        gamma = tf.transpose(tf.gather(self.gamma, idx, axis=1))[:, None, None, :]
        beta = tf.transpose(tf.gather(self.beta, idx, axis=1))[:, None, None, :]
        return inputs * gamma + beta

    def get_config(self):
        config = super().get_config()
        config.update({"channels": self.channels, "num_pairs": self.num_pairs})
        return config


@keras.saving.register_keras_serializable(package="mtpsl_tf")
class FiLMConvBlock(InputConvBlock):
    """conv3x3 -> per-item BatchNorm -> FiLM -> ReLU, `[N,H,W,C_in] -> [N,H,W,filters]`.

    FiLM tables `gamma` (init 1) and `beta` (init 0) have shape `[filters, num_pairs]` (the
    PyTorch layout, so the authors' tables copy over directly); item n uses column
    `pair_idx[n]`: `x * gamma[:, k] + beta[:, k]`.
    """

    def __init__(self, filters: int, num_pairs: int, epsilon: float = 1e-5, **kwargs):
        super().__init__(filters, epsilon=epsilon, **kwargs)
        self.num_pairs = num_pairs

    def build(self, input_shape):
        table_shape = (self.filters, self.num_pairs)
        super().build(input_shape)
        self.gamma = self.add_weight(name="gamma", shape=table_shape, initializer="ones")
        self.beta = self.add_weight(name="beta", shape=table_shape, initializer="zeros")

    def call(self, inputs, pair_idx, training=None):
        """inputs `[N,H,W,C_in]`; pair_idx int scalar or `[N]`; returns `[N,H,W,filters]`."""
        x = self.bn(self.conv(inputs), training=training)
        idx = as_item_pair_index(pair_idx, tf.shape(x)[0])
        # Gather each item's FiLM column: [C, N] -> [N, 1, 1, C].
        gamma = tf.transpose(tf.gather(self.gamma, idx, axis=1))[:, None, None, :]
        beta = tf.transpose(tf.gather(self.beta, idx, axis=1))[:, None, None, :]
        return tf.nn.relu(x * gamma + beta)

    def get_config(self):
        config = super().get_config()
        config.update({"num_pairs": self.num_pairs})
        return config
