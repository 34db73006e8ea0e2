"""The ResNet-18 mapping encoder of MTPSL on PASCAL-Context (supplement: "ResNet-18 with task
specific input layers (one convolutional layer for each task) before the residual blocks").

The authors released no PASCAL code for their method; our reading (docs/PASCAL_MTPSL.md):

* input layer per task = the ResNet stem conv (7x7, stride 2, no bias) -> per-item BatchNorm
  -> ReLU, `[N,H,W,C_t] -> [N,H/2,W/2,filters[0]]` (no FiLM, as the SegNet mapping's);
* shared encoder = the stem's 3x3/2 max-pool and layer1..layer4 laid out exactly as the
  backbone's dilated ResNet-18 (`models.resnet.DILATED_LAYOUT`: output stride 8), so its output
  `[N,H/8,W/8,filters[4]]` has the shape of the resnet18_aspp "feature" it is compared with;
* FiLM after each residual block's conv -> BN (x * gamma[:, k] + beta[:, k], before the ReLU
  and, for the second conv, before the residual sum), none on the shortcut's BN: every conv
  of the residual branch is modulated per pair, as every conv of the SegNet mapping is;
* BatchNorm statistics per item (training) as everywhere in the mapping net;
* initialised from scratch (torchvision's ResNet init; FiLM gamma 1, beta 0), like the
  authors' SegNet mapping net.
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from mtpsl_tf.methods.mtpsl.encoders import MAPPING_ENCODERS, MappingEncoder
from mtpsl_tf.methods.mtpsl.film import FiLM, ItemBatchNorm
from mtpsl_tf.models.resnet import DILATED_LAYOUT, ORIGINAL_STRIDES, TorchConv2D, max_pool_3x3_s2_p1


def _shape(channels: int) -> tuple:
    return (None, None, None, int(channels))


@keras.saving.register_keras_serializable(package="mtpsl_tf")
class StemInputBlock(keras.layers.Layer):
    """Task-specific input layer: ResNet's stem conv 7x7/2 (padding 3, no bias) -> per-item
    BatchNorm -> ReLU, `[N,H,W,C_t] -> [N,ceil(H/2),ceil(W/2),filters]`."""

    def __init__(self, filters: int, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.epsilon = epsilon
        self.conv = TorchConv2D(filters, 7, 2, torch_padding=3, name="conv", dtype=self.dtype_policy)
        self.bn = ItemBatchNorm(epsilon=epsilon, name="bn", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.conv.build(_shape(input_shape[-1]))
        self.bn.build(_shape(self.filters))
        super().build(input_shape)

    def call(self, inputs, training=None):
        return tf.nn.relu(self.bn(self.conv(inputs), training=training))

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package="mtpsl_tf")
class FiLMBasicBlock(keras.layers.Layer):
    """torchvision's BasicBlock with per-item BatchNorm and FiLM after both conv -> BN:
    `relu(film2(bn2(conv2(relu(film1(bn1(conv1 x)))))) + shortcut(x))`, `[N,H,W,C_in] ->
    [N,H/strides,W/strides,filters]`.

    Args:
        filters, strides, dilation, downsample: as `models.resnet.BasicBlock`.
        num_pairs: columns of the FiLM tables `film1` / `film2` (`[filters, num_pairs]`).
        epsilon: BatchNorm epsilon.
    """

    def __init__(self, filters: int, num_pairs: int, strides: int = 1, dilation: Sequence[int] = (1, 1),
                 downsample: bool = False, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.num_pairs = num_pairs
        self.strides = strides
        self.dilation = [int(d) for d in dilation]
        self.downsample = bool(downsample)
        self.epsilon = epsilon
        d1, d2 = self.dilation
        dtype = self.dtype_policy
        self.conv1 = TorchConv2D(filters, 3, strides, torch_padding=d1, dilation_rate=d1, name="conv1", dtype=dtype)
        self.bn1 = ItemBatchNorm(epsilon, name="bn1", dtype=dtype)
        self.film1 = FiLM(filters, num_pairs, name="film1", dtype=dtype)
        self.conv2 = TorchConv2D(filters, 3, 1, torch_padding=d2, dilation_rate=d2, name="conv2", dtype=dtype)
        self.bn2 = ItemBatchNorm(epsilon, name="bn2", dtype=dtype)
        self.film2 = FiLM(filters, num_pairs, name="film2", dtype=dtype)
        if self.downsample:
            self.downsample_conv = TorchConv2D(filters, 1, strides, name="downsample_conv", dtype=dtype)
            self.downsample_bn = ItemBatchNorm(epsilon, name="downsample_bn", dtype=dtype)

    def build(self, input_shape):
        out = _shape(self.filters)
        self.conv1.build(_shape(input_shape[-1]))
        for layer, shape in ((self.bn1, out), (self.film1, out), (self.conv2, out), (self.bn2, out),
                             (self.film2, out)):
            layer.build(shape)
        if self.downsample:
            self.downsample_conv.build(_shape(input_shape[-1]))
            self.downsample_bn.build(out)
        super().build(input_shape)

    def film_layers(self) -> list:
        return [self.film1, self.film2]

    def call(self, x, pair_idx, training=None):
        out = tf.nn.relu(self.film1(self.bn1(self.conv1(x), training=training), pair_idx))
        out = self.film2(self.bn2(self.conv2(out), training=training), pair_idx)
        shortcut = self.downsample_bn(self.downsample_conv(x), training=training) if self.downsample else x
        return tf.nn.relu(out + shortcut)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, num_pairs=self.num_pairs, strides=self.strides,
                      dilation=list(self.dilation), downsample=self.downsample, epsilon=self.epsilon)
        return config


@MAPPING_ENCODERS.register("resnet18_aspp")
@keras.saving.register_keras_serializable(package="mtpsl_tf")
class ResNet18MappingEncoder(MappingEncoder):
    """`[N,H/2,W/2,f0]` (the input layers' output), int32 `[N]` -> `[N,H/8,W/8,f4]`, the
    resnet18_aspp "feature" of an `[H, W]` image (any H, W: ceil at every stride-2 step, as
    the backbone).

    `filters` = the backbone's (stem, layer1..layer4). Sublayers `blocks[i]` are named
    `layer{l}_{j}` as the backbone's (two FiLM BasicBlocks per layer); input layers come from
    `make_input_layer` (`StemInputBlock`).
    """

    def __init__(self, filters, num_pairs, epsilon=1e-5, **kwargs):
        super().__init__(filters, num_pairs, epsilon, **kwargs)
        if len(self.filters) != 5 or min(self.filters) <= 0:
            raise ValueError(f"the resnet18_aspp mapping encoder needs the backbone's 5 positive widths "
                             f"(stem, layer1..layer4), got {list(filters)}")
        self.blocks = []
        channels = self.filters[0]
        for i, layout in enumerate(DILATED_LAYOUT):
            width = self.filters[i + 1]
            for j, (stride, d1, d2) in enumerate(layout):
                downsample = j == 0 and (ORIGINAL_STRIDES[i] != 1 or channels != width)
                self.blocks.append(FiLMBasicBlock(width, self.num_pairs, stride, (d1, d2), downsample, epsilon,
                                                  name=f"layer{i + 1}_{j}", dtype=self.dtype_policy))
                channels = width

    @property
    def input_width(self) -> int:
        return self.filters[0]

    def make_input_layer(self, name: str) -> keras.layers.Layer:
        return StemInputBlock(self.input_width, epsilon=self.epsilon, name=name, dtype=self.dtype_policy)

    def build(self, input_shape=None):
        channels = self.filters[0]
        for block in self.blocks:
            block.build(_shape(channels))
            channels = block.filters
        super().build(input_shape)

    def film_blocks(self) -> list:
        return [film for block in self.blocks for film in block.film_layers()]

    def call(self, x, pair_idx, training=None, remat=False):
        x = max_pool_3x3_s2_p1(x, nonnegative=True)  # the input layers end with a ReLU
        for block in self.blocks:
            x = self.segment(lambda h, block=block: block(h, pair_idx, training=training), x, remat)
        return x
