"""Building blocks shared by the backbones: PyTorch-faithful BatchNorm, conv blocks,
argmax max-pooling and max-unpooling written with TFLite builtin ops only."""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from mtpsl_tf.distribute import replica_sum

PACKAGE = "mtpsl_tf"


def torch_conv_initializer() -> keras.initializers.Initializer:
    """Xavier-normal as `torch.nn.init.xavier_normal_` (untruncated, fan_avg)."""
    return keras.initializers.VarianceScaling(
        scale=1.0, mode="fan_avg", distribution="untruncated_normal"
    )


def conv2d(filters: int, kernel_size: int, name: str, dtype=None) -> keras.layers.Conv2D:
    """Conv with bias, 'same' padding (= PyTorch padding k//2), Xavier-normal, zero bias.

    `dtype`: the layer's dtype policy (None: the global one), e.g. a parent's `dtype_policy`.
    The SegNet and the MTPSL mapping net build their 3x3 convs with it."""
    return keras.layers.Conv2D(filters, kernel_size, padding="same", use_bias=True,
                               kernel_initializer=torch_conv_initializer(), bias_initializer="zeros",
                               name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
class BatchNorm(keras.layers.Layer):
    """BatchNorm over the last axis with PyTorch's semantics.

    Training normalises with the batch's biased variance and updates the running
    variance with the *unbiased* one (Bessel-corrected, as `torch.nn.BatchNorm2d`),
    which Keras' BatchNormalization does not; inference uses the running statistics.
    Statistics are computed in float32 under mixed precision (float16/bfloat16 compute) and
    in float64 when the layer computes in float64 (tests that must see no float32 rounding).

    Under a tf.distribute strategy each replica normalises with its own batch's statistics
    (as PyTorch DataParallel), but the running statistics are updated from the GLOBAL batch
    (mean and Bessel-corrected variance of all replicas' pixels, two all-reduces of `[C+1]`),
    so every replica stores the same running values, equal to one device's on the global
    batch. (Without this each replica's copy of the running mean drifted to its own batch's,
    and the checkpoint kept the first replica's.)

    Args:
        epsilon: added to the variance (PyTorch default 1e-5).
        momentum: PyTorch-style running-average momentum (0.1 = 10% new batch).

    `freeze_statistics` (not a constructor argument, not saved): True while a recomputation
    of the layer is traced (`models.remat.frozen_statistics`), which must not update the
    running statistics a second time.
    """

    def __init__(self, epsilon: float = 1e-5, momentum: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.momentum = momentum
        self.freeze_statistics = False

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma", autocast=False)
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta", autocast=False)
        self.moving_mean = self.add_weight(
            shape=(channels,), initializer="zeros", trainable=False, name="moving_mean", autocast=False
        )
        self.moving_variance = self.add_weight(
            shape=(channels,), initializer="ones", trainable=False, name="moving_variance", autocast=False
        )

    def call(self, x, training=False):
        # At least float32: float16 / bfloat16 statistics would lose the variance.
        x32 = tf.cast(x, tf.float64 if self.compute_dtype == "float64" else tf.float32)
        # Variables are created with autocast=False: statistics and the affine transform stay
        # in float32 under mixed precision.
        gamma, beta = self.gamma, self.beta
        if training:
            mean, variance = tf.nn.moments(x32, axes=[0, 1, 2])
            if not self.freeze_statistics:
                running_mean, unbiased = self._running_statistics(tf.stop_gradient(x32), tf.stop_gradient(mean),
                                                                  tf.stop_gradient(variance))
                m = self.momentum
                self.moving_mean.assign(
                    self.moving_mean * (1.0 - m) + tf.cast(running_mean, self.moving_mean.dtype) * m)
                self.moving_variance.assign(
                    self.moving_variance * (1.0 - m) + tf.cast(unbiased, self.moving_variance.dtype) * m)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        scale = gamma * tf.math.rsqrt(variance + self.epsilon)
        shift = beta - mean * scale
        return tf.cast(x32 * scale + shift, self.compute_dtype)

    @staticmethod
    def _running_statistics(x, mean, variance):
        """(mean `[C]`, Bessel-corrected variance `[C]`) for the running statistics: of this
        batch `x` `[B, H, W, C]` (whose `mean` / biased `variance` are given) on one replica,
        of every replica's pixels under a strategy. Two all-reduces (sums and count, then
        squared deviations from the global mean) rather than a sum of squares, which cancels
        in float32."""
        n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), x.dtype)
        if tf.distribute.get_replica_context() is None or tf.distribute.get_strategy().num_replicas_in_sync == 1:
            return mean, variance * n / tf.maximum(n - 1.0, 1.0)
        sums = replica_sum(tf.concat([tf.reduce_sum(x, axis=[0, 1, 2]), n[None]], 0))
        count = sums[-1]
        mean = sums[:-1] / count
        squares = replica_sum(tf.reduce_sum(tf.math.squared_difference(x, mean), axis=[0, 1, 2]))
        return mean, squares / tf.maximum(count - 1.0, 1.0)

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon, momentum=self.momentum)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConvBNReLU(keras.layers.Layer):
    """conv3x3 -> BatchNorm -> ReLU, repeated `depth` times (SegNet's `conv_layer`).

    Args:
        filters: output channels of every conv.
        depth: number of conv-BN-ReLU units (2 for the "deep" SegNet variant).
    """

    def __init__(self, filters: int, depth: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.depth = depth
        self.convs = [conv2d(filters, 3, name=f"conv{i}") for i in range(depth)]
        self.norms = [BatchNorm(name=f"bn{i}") for i in range(depth)]

    def call(self, x, training=False):
        for conv, norm in zip(self.convs, self.norms):
            x = tf.nn.relu(norm(conv(x), training=training))
        return x

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, depth=self.depth)
        return config


def _window_switches(x):
    """Splits 2x2 windows and returns (positions, first-max one-hot masks).

    x: [B, H, W, C] with even H, W. Returns two lists of 4 tensors [B, H/2, W/2, C]:
    the window's values in row-major order and masks m_k = (x_k == max) and no
    earlier m_j: exactly PyTorch's choice of the FIRST maximum, ties included.
    """
    channels = x.shape[-1]
    blocks = tf.nn.space_to_depth(x, 2)  # channel index = (dy * 2 + dx) * C + c
    parts = [blocks[..., k * channels : (k + 1) * channels] for k in range(4)]
    peak = tf.maximum(tf.maximum(parts[0], parts[1]), tf.maximum(parts[2], parts[3]))
    masks, taken = [], None
    for part in parts:
        hit = tf.equal(part, peak)
        mask = hit if taken is None else tf.logical_and(hit, tf.logical_not(taken))
        taken = mask if taken is None else tf.logical_or(taken, mask)
        masks.append(tf.cast(mask, x.dtype))
    return parts, masks


def _arithmetic_window_switches(x):
    """(pooled, first-max one-hot masks) of 2x2 windows from arithmetic ops only.

    x: [B, H, W, C] with even H, W, finite. Returns pooled `[B, H/2, W/2, C]` (MAX_POOL_2D)
    and 4 masks `[B, H/2, W/2, C]` in space_to_depth order, equal to `_window_switches'`
    (first maximum, ties included): d_k = max - x_k >= 0 is exactly 0 at a maximum, so
    n_k = min(ceil(d_k), 1) is exactly 0 there and 1 elsewhere (any d_k > 0, subnormals
    included, has ceil 1). The first maximum is at k iff n_0 ... n_{k-1} = 1 and n_k = 0:
    with the prefix products P_k = n_0 ... n_k the masks are 1 - P_0, P_0 - P_1, P_1 - P_2
    and P_2 (one of the four is the maximum, so P_3 = 0): exact in float, and n_3 is never
    needed. 14 element-wise ops at the pooled size (was 24 with a running "taken" mask), from
    MAX_POOL_2D, SPACE_TO_DEPTH, SPLIT, SUB, CEIL, MINIMUM, MUL: ops the XNNPACK delegate runs,
    unlike EQUAL / LOGICAL_* / CAST of booleans. The pooled value's gradient is max_pool's
    (to every tied maximum): for inference and export only.
    """
    pooled = tf.nn.max_pool2d(x, 2, 2, "VALID")
    parts = tf.split(tf.nn.space_to_depth(x, 2), 4, axis=-1)
    one = tf.constant(1.0, x.dtype)
    not_max = [tf.minimum(tf.math.ceil(pooled - part), one) for part in parts[:3]]
    prefix = [not_max[0]]
    for n in not_max[1:]:
        prefix.append(prefix[-1] * n)
    masks = [one - prefix[0], prefix[0] - prefix[1], prefix[1] - prefix[2], prefix[2]]
    return pooled, masks


SWITCH_OPS = ("compare", "arithmetic")


@keras.saving.register_keras_serializable(package=PACKAGE)
class ArgMaxPool2D(keras.layers.Layer):
    """2x2/2 max-pool that also returns the switches MaxUnpool2D needs.

    Returns `(pooled [B,H/2,W/2,C], switches [B,H/2,W/2,4C])`, switches being the one-hot
    (first-maximum) window positions in space_to_depth order. The pooled value is
    selected by the switch, so its gradient flows to the first maximum only, as in
    PyTorch. Builtin TFLite ops only; compiles under XLA.

    Args:
        switch_ops: "compare" (training and default: comparisons and logical ops) or
            "arithmetic" (inference-only: the same values from ops the XNNPACK delegate
            supports, see `_arithmetic_window_switches`; the exporter selects it for LiteRT
            with `arithmetic_switches`).
    """

    def __init__(self, switch_ops: str = "compare", **kwargs):
        super().__init__(**kwargs)
        if switch_ops not in SWITCH_OPS:
            raise ValueError(f"switch_ops must be one of {SWITCH_OPS}, got {switch_ops!r}")
        self.switch_ops = switch_ops

    def call(self, x):
        if x.shape[1] is not None and (x.shape[1] % 2 or x.shape[2] % 2):
            raise ValueError(f"ArgMaxPool2D needs even height and width, got {x.shape}")
        if self.switch_ops == "arithmetic":
            pooled, masks = _arithmetic_window_switches(x)
            return pooled, tf.concat(masks, axis=-1)
        parts, masks = _window_switches(x)
        pooled = tf.add_n([p * m for p, m in zip(parts, masks)])
        return pooled, tf.concat(masks, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(switch_ops=self.switch_ops)
        return config


@contextlib.contextmanager
def layers_switched(network: keras.layers.Layer, layer_type: type, attribute: str, value, keep=None):
    """Within the block, `attribute` is `value` on every `layer_type` layer of `network` (those
    for which `keep(layer)` holds, when given; trace the network inside it); the previous
    values are restored afterwards. Yields how many layers were switched."""
    layers = [layer for layer in network._flatten_layers(include_self=True)
              if isinstance(layer, layer_type) and (keep is None or keep(layer))]
    before = [getattr(layer, attribute) for layer in layers]
    for layer in layers:
        setattr(layer, attribute, value)
    try:
        yield len(layers)
    finally:
        for layer, previous in zip(layers, before):
            setattr(layer, attribute, previous)


def arithmetic_switches(network: keras.layers.Layer):
    """Within the block, every ArgMaxPool2D of `network` computes its switches with
    arithmetic ops (trace the network inside it); restored afterwards."""
    return layers_switched(network, ArgMaxPool2D, "switch_ops", "arithmetic")


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaxUnpool2D(keras.layers.Layer):
    """Inverse of ArgMaxPool2D: puts each value at its window's recorded maximum.

    Inputs `(y [B,h,w,C], switches [B,h,w,4C])` -> `[B,2h,2w,C]`, zero elsewhere;
    bit-exact with `torch.nn.MaxUnpool2d` given the pooling indices.
    """

    def call(self, inputs):
        y, switches = inputs
        # y broadcast over the 4 window positions (MUL of [B,h,w,4,C] by [B,h,w,1,C]), not
        # tiled by CONCATENATION: the same products without writing the tiled copy
        # (LiteRT/XNNPACK, first unpooling of the 288x384 SegNet: 23 -> 18 ms).
        shape = tf.shape(y)
        windows = tf.reshape(tf.cast(switches, y.dtype), tf.concat([shape[:3], [4, shape[3]]], 0))
        placed = windows * tf.expand_dims(y, 3)
        return tf.nn.depth_to_space(tf.reshape(placed, tf.concat([shape[:3], [4 * shape[3]]], 0)), 2)
