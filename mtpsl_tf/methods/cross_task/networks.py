"""The cross-task mapping networks: one whole SegNet per ordered task pair (s, t), taking
task s's mapping input (`Task.mapping_prediction` / `mapping_label`) and predicting task t
with t's head (the supplement: "as in [Zamir et al.] we use the whole SegNet as the
cross-task mapping functions").

Vectorised over pairs: the P = T(T-1) SegNets run as ONE SegNet whose every convolution is
grouped by pair (`groups=P`: pair p's channels only see pair p's channels), whose BatchNorm,
ReLU, max-pooling and unpooling are per channel anyway, so pair p's slice computes exactly a
separate SegNet with its own weights. Inputs are zero-padded to the widest source and outputs
to the widest target (the padding channels carry no signal). One network call per step, one
trace, XLA-able, and no Python loop over pairs or images inside the network.
"""

from __future__ import annotations

import math
from typing import List, Mapping, Sequence, Tuple

import keras
import tensorflow as tf

from mtpsl_tf.models.heads import ACTIVATIONS
from mtpsl_tf.models.input_size import SEGNET_INPUT_MULTIPLE
from mtpsl_tf.models.layers import PACKAGE, ArgMaxPool2D, BatchNorm, MaxUnpool2D
from mtpsl_tf.models.segnet import SegNetStages


def ordered_pairs(names: Sequence[str]) -> List[Tuple[str, str]]:
    """Every (source, target) of distinct tasks, source-major in task order."""
    return [(s, t) for s in names for t in names if s != t]


@keras.saving.register_keras_serializable(package=PACKAGE)
class GroupedXavierNormal(keras.initializers.Initializer):
    """torch's xavier_normal_ for each group of a grouped conv kernel `[k, k, in/groups, out]`:
    std = sqrt(2 / (k*k*in/groups + k*k*out/groups)), as one group's separate conv would get."""

    def __init__(self, groups: int):
        self.groups = groups

    def __call__(self, shape, dtype=None):
        receptive = math.prod(shape[:-2])
        fan_in, fan_out = receptive * shape[-2], receptive * shape[-1]
        # Keras' fan_avg counts every group's outputs; rescale to one group's.
        scale = (fan_in + fan_out) / (fan_in + fan_out / self.groups)
        return keras.initializers.VarianceScaling(scale=scale, mode="fan_avg",
                                                  distribution="untruncated_normal")(shape, dtype=dtype)

    def get_config(self):
        return {"groups": self.groups}


@keras.saving.register_keras_serializable(package=PACKAGE)
class GroupedConv2D(keras.layers.Layer):
    """`groups` convs of `filters` outputs each side by side (SegNet's conv: bias, 'same').

    Calls `tf.nn.conv2d` with a `[k, k, in/groups, groups*filters]` kernel, TensorFlow's
    native grouped convolution (CPU, GPU and XLA): Keras' Conv2D(groups=...) would wrap each
    call in its own jit-compiled function on the TensorFlow backend.

    Args:
        filters: output channels of each group.
        kernel_size: square kernel size.
        groups: number of groups (pairs).
    """

    def __init__(self, filters: int, kernel_size: int, groups: int, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.groups = groups

    def build(self, input_shape):
        channels = int(input_shape[-1])
        if channels % self.groups:
            raise ValueError(f"{self.name}: {channels} input channels do not split into {self.groups} groups")
        k = self.kernel_size
        self.kernel = self.add_weight(shape=(k, k, channels // self.groups, self.filters * self.groups),
                                      initializer=GroupedXavierNormal(self.groups), name="kernel")
        self.bias = self.add_weight(shape=(self.filters * self.groups,), initializer="zeros", name="bias")

    def call(self, x):
        kernel = tf.cast(self.kernel, x.dtype)
        return tf.nn.conv2d(x, kernel, strides=1, padding="SAME") + tf.cast(self.bias, x.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, groups=self.groups)
        return config


def grouped_conv(filters: int, kernel_size: int, groups: int, name: str) -> GroupedConv2D:
    return GroupedConv2D(filters, kernel_size, groups, name=name)


@keras.saving.register_keras_serializable(package=PACKAGE)
class GroupedConvBNReLU(keras.layers.Layer):
    """SegNet's conv3x3 -> BatchNorm -> ReLU for `groups` networks side by side.

    Args:
        filters: output channels of each group's conv.
        groups: number of networks (pairs).
    """

    def __init__(self, filters: int, groups: int, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.groups = groups
        self.conv = grouped_conv(filters, 3, groups, name="conv0")
        self.norm = BatchNorm(name="bn0")

    def call(self, x, training=False):
        return tf.nn.relu(self.norm(self.conv(x), training=training))

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, groups=self.groups)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class PairMappings(SegNetStages, keras.layers.Layer):
    """The SegNets of every ordered pair of `heads`' tasks, as one grouped network.

    Args:
        heads: ordered task name -> head spec {"channels", "activation"} (the tasks' own).
        filters: the five SegNet widths of every mapping network.
        remat: keep only each encoder / decoder stage's inputs (and the pooling switches) for
            the backward pass and recompute the stage there (`models.remat`), in training and
            in `map_all_frozen`, whose outputs are differentiated with respect to the inputs.
            Same values and gradients; less memory, one more forward pass of the mappings.

    `map_all(inputs, training)`: inputs a list, per pair of `pairs()`, of source mapping inputs
    `[B,H,W,channels of source]` (H, W multiples of 32); returns the list of target outputs
    `[B,H,W,channels of target]` (after the target head's activation).
    """

    def __init__(self, heads: Mapping[str, Mapping[str, object]], filters: Sequence[int], remat: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        self.remat = bool(remat)
        if len(heads) < 2:
            raise ValueError(f"cross-task mappings need at least two tasks, got {list(heads)}")
        self.heads = {name: dict(spec) for name, spec in heads.items()}
        self.filters = [int(f) for f in filters]
        if len(self.filters) != 5:
            raise ValueError(f"mapping SegNets need 5 filter widths, got {self.filters}")
        groups = len(self.pairs())
        self.in_width = max(int(spec["channels"]) for spec in self.heads.values())
        self.out_width = self.in_width
        f = self.filters
        self.encoder_block = [GroupedConvBNReLU(f[i], groups, name=f"encoder_block_{i}") for i in range(5)]
        self.decoder_block = [GroupedConvBNReLU(f[max(i - 1, 0)], groups, name=f"decoder_block_{i}")
                              for i in range(5)]
        self.conv_block_enc = [[GroupedConvBNReLU(f[i], groups, name=f"conv_block_enc_{i}_{j}")
                                for j in range(1 if i <= 1 else 2)] for i in range(5)]
        self.conv_block_dec = [[GroupedConvBNReLU(f[max(i - 1, 0)], groups, name=f"conv_block_dec_{i}_{j}")
                                for j in range(1 if i <= 1 else 2)] for i in range(5)]
        self.pools = [ArgMaxPool2D(name=f"pool_{i}") for i in range(5)]
        self.unpools = [MaxUnpool2D(name=f"unpool_{i}") for i in range(5)]
        self.head_hidden = grouped_conv(f[0], 3, groups, name="head_conv3x3")
        self.head_out = grouped_conv(self.out_width, 1, groups, name="head_conv1x1")

    def pairs(self) -> List[Tuple[str, str]]:
        return ordered_pairs(list(self.heads))

    def build(self, input_shape=None):
        """Creates every variable (input_shape is ignored)."""
        if self.built:
            return
        size = SEGNET_INPUT_MULTIPLE
        self.call(tf.zeros([1, size, size, self.in_width * len(self.pairs())]), training=False)
        super().build(input_shape)

    def stack_inputs(self, inputs: Sequence[tf.Tensor]) -> tf.Tensor:
        """Per-pair inputs -> `[B,H,W,P*in_width]`, each zero-padded to the widest source."""
        padded = [tf.pad(tf.cast(x, tf.float32), [[0, 0], [0, 0], [0, 0], [0, self.in_width - x.shape[-1]]])
                  for x in inputs]
        return tf.concat(padded, axis=-1)

    def split_outputs(self, raw: tf.Tensor) -> List[tf.Tensor]:
        """`[B,H,W,P*out_width]` head logits -> per pair the target's output (activation applied)."""
        outputs = []
        for p, (_, target) in enumerate(self.pairs()):  # static slicing, no computation per pair
            spec = self.heads[target]
            start = p * self.out_width
            logits = raw[..., start:start + int(spec["channels"])]
            if spec["activation"] == "l2_normalize":
                # With epsilon: a mapping fed a constant map (e.g. an all-equal normalised depth)
                # can output exact zeros under batch statistics, and 0/0 would poison the step.
                outputs.append(tf.math.l2_normalize(logits, axis=-1))
            else:
                outputs.append(ACTIVATIONS[spec["activation"]](logits))
        return outputs

    def call(self, x, training=False):
        """x `[B,H,W,P*in_width]` -> raw head logits `[B,H,W,P*out_width]` float32."""
        switches = []
        for i in range(5):
            x, s = self._segment(lambda h, i=i: self._encoder_stage(i, h, training), x, self.remat)
            switches.append(tf.stop_gradient(s))  # 0/1 window masks: no gradient, as in the plain pass
        for i in range(4, -1, -1):
            x = self._segment(lambda h, i=i: self._decoder_stage(i, h, switches[i], training), x, self.remat)
        return tf.cast(self.head_out(self.head_hidden(x)), tf.float32)

    def map_all(self, inputs: Sequence[tf.Tensor], training: bool = False) -> List[tf.Tensor]:
        return self.split_outputs(self(self.stack_inputs(inputs), training=training))

    def map_all_frozen(self, inputs: Sequence[tf.Tensor]) -> List[tf.Tensor]:
        """`map_all` in inference mode whose outputs carry no gradient to the weights (only to
        the inputs): the weights enter as constants through Keras' stateless call."""
        trainable = [tf.stop_gradient(v) for v in self.trainable_variables]
        non_trainable = [tf.convert_to_tensor(v) for v in self.non_trainable_variables]
        raw, _ = self.stateless_call(trainable, non_trainable, self.stack_inputs(inputs), training=False)
        return self.split_outputs(raw)

    def get_config(self):
        config = super().get_config()
        config.update(heads=self.heads, filters=self.filters, remat=self.remat)
        return config
