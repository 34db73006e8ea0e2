"""The joint-space discriminator and its GAN losses (pure functions of logits).

"real" = label-based embeddings e_t = m(label of t; (s, t)), "fake" = prediction-based
embeddings e_s = m(prediction of s; (s, t)) of the same active item.
"""

from __future__ import annotations

import keras
import tensorflow as tf

GAN_LOSSES = ("non_saturating", "least_squares")


def discriminator_loss(real_logits, fake_logits, kind: str) -> tf.Tensor:
    """Per-item discriminator loss `[N]` (float32).

    non_saturating: softplus(-D(real)) + softplus(D(fake))  (= BCE, real 1 / fake 0);
    least_squares:  0.5 * ((D(real) - 1)^2 + D(fake)^2)    (LSGAN, Mao et al. 2017).
    """
    real, fake = tf.cast(real_logits, tf.float32), tf.cast(fake_logits, tf.float32)
    if kind == "non_saturating":
        return tf.nn.softplus(-real) + tf.nn.softplus(fake)
    if kind == "least_squares":
        return 0.5 * (tf.square(real - 1.0) + tf.square(fake))
    raise ValueError(f"unknown GAN loss {kind!r}; expected one of {GAN_LOSSES}")


def generator_loss(fake_logits, kind: str) -> tf.Tensor:
    """Per-item loss `[N]` of the networks producing the fake embeddings.

    non_saturating: softplus(-D(fake)) (= -log sigmoid D(fake)); least_squares: 0.5 (D(fake) - 1)^2.
    """
    fake = tf.cast(fake_logits, tf.float32)
    if kind == "non_saturating":
        return tf.nn.softplus(-fake)
    if kind == "least_squares":
        return 0.5 * tf.square(fake - 1.0)
    raise ValueError(f"unknown GAN loss {kind!r}; expected one of {GAN_LOSSES}")


@keras.saving.register_keras_serializable(package="mtpsl_tf")
class JointSpaceDiscriminator(keras.layers.Layer):
    """D(e; pair, f) -> logit `[N]`, from embeddings `[N, h, w, channels]`.

    concat(e, sg(f) if use_feature, one-hot pair `[N, h, w, num_pairs]`) -> conv3x3(width) ->
    LeakyReLU(0.2) -> conv1x1(1) -> mean over positions (a patch discriminator whose verdict
    is conditioned on the task pair and, with use_feature, on the image's shared feature, so
    it judges whether an embedding fits THIS image rather than looks like a label in general).

    Args:
        channels: channels of the embeddings (and of the feature).
        num_pairs: T(T-1).
        width: hidden channels.
        use_feature: condition on the image feature.
    """

    def __init__(self, channels: int, num_pairs: int, width: int = 64, use_feature: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.num_pairs = int(num_pairs)
        self.width = int(width)
        self.use_feature = bool(use_feature)

    def build(self, input_shape=None):
        inputs = self.channels * (2 if self.use_feature else 1) + self.num_pairs
        self.kernel_1 = self.add_weight(name="kernel_1", shape=(3, 3, inputs, self.width), initializer="glorot_uniform")
        self.bias_1 = self.add_weight(name="bias_1", shape=(self.width,), initializer="zeros")
        self.kernel_2 = self.add_weight(name="kernel_2", shape=(1, 1, self.width, 1), initializer="glorot_uniform")
        self.bias_2 = self.add_weight(name="bias_2", shape=(1,), initializer="zeros")
        super().build(input_shape)

    def call(self, embedding, pair_idx, feature=None, frozen=False):
        """embedding `[N,h,w,C]`, pair_idx int `[N]`, feature `[N,h,w,C]` (use_feature);
        frozen: no gradient reaches the discriminator's weights (the generator's loss)."""
        x = tf.cast(embedding, self.compute_dtype)
        parts = [x]
        if self.use_feature:
            if feature is None:
                raise ValueError("JointSpaceDiscriminator(use_feature=True) needs the image feature")
            parts.append(tf.cast(tf.stop_gradient(feature), self.compute_dtype))
        pair = tf.one_hot(tf.cast(pair_idx, tf.int32), self.num_pairs, dtype=self.compute_dtype)
        parts.append(tf.ones_like(x[..., :1]) * pair[:, None, None, :])
        x = tf.concat(parts, axis=-1)

        def read(weight):
            value = tf.cast(tf.convert_to_tensor(weight.value), self.compute_dtype)
            return tf.stop_gradient(value) if frozen else value

        x = tf.nn.conv2d(x, read(self.kernel_1), strides=1, padding="SAME") + read(self.bias_1)
        x = tf.nn.leaky_relu(x, alpha=0.2)
        x = tf.nn.conv2d(x, read(self.kernel_2), strides=1, padding="SAME") + read(self.bias_2)
        return tf.reduce_mean(tf.cast(x[..., 0], tf.float32), axis=[1, 2])

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, num_pairs=self.num_pairs, width=self.width,
                      use_feature=self.use_feature)
        return config
