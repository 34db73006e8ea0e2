"""Dilated ResNet-18 + one DeepLab-v3 ASPP head per task: the multi-task baseline of
Multi-Task-Learning-PyTorch (PASCAL-Context, `backbone: resnet18`, `dilated: True`,
`head: deeplab`).

Backbone = torchvision's resnet18 (conv7x7/2 - BN - ReLU - maxpool3x3/2, layer1..4 of two
BasicBlocks each, downsample = conv1x1 + BN) modified by the reference's
`ResnetDilated(dilate_scale=8)`, which walks layer3 (dilate=2) and layer4 (dilate=4) and, for
every conv,

* stride 2 -> stride 1, and a 3x3 one gets dilation = padding = dilate // 2;
* any other 3x3 conv gets dilation = padding = dilate.

So (stride, dilation of conv1, dilation of conv2) per block is

    layer1: (1, 1, 1) (1, 1, 1)       layer3: (1, 1, 2) (1, 2, 2)
    layer2: (2, 1, 1) (1, 1, 1)       layer4: (1, 2, 4) (1, 4, 4)

and the first blocks of layer3 / layer4 keep their downsample branch, now conv1x1 stride 1.
The output stride is 8 (conv1, maxpool, layer2).

Padding is PyTorch's: explicit symmetric zero padding then a VALID conv (`TorchConv2D`), and
-inf-like padding 1 for the max-pool. Keras' "same" would pad (0, 1) instead of (1, 1) for a
3x3/2 conv or pool on an even size, shifting every window by one pixel.

Input: float32 images `[B,H,W,3]` (RGB) in [0, 1], like every backbone of this library. The
reference normalises in its data pipeline (ToTensor to [0, 1], then Normalize with ImageNet's
mean / std); here the backbone does `(x - mean) / std` itself, so the input contract is
unchanged and torchvision's ImageNet weights see what they were trained on.

Weights: `pretrained` = torchvision's resnet18 ImageNet state dict (resnet18-5c106cde.pth or
resnet18-f37072fd.pth), read with `mtpsl_tf.interop.torch_format` (no code is executed, nothing
is ever downloaded) and placed by `mtpsl_tf.interop.resnet.load_torchvision_resnet`. Without
it, convs get torchvision's
init (kaiming-normal, fan_out, ReLU gain), BatchNorm weight 1 / bias 0.
"""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, Sequence

import keras
import tensorflow as tf

from mtpsl_tf.models import registry
from mtpsl_tf.models.aspp import ASPP_CHANNELS, ATROUS_RATES, DROPOUT, DeepLabHead, channels_shape
from mtpsl_tf.models.backbone import Backbone
from mtpsl_tf.models.dilated_conv import DilatedConv2D
from mtpsl_tf.models.heads import ACTIVATIONS
from mtpsl_tf.models.layers import PACKAGE, BatchNorm
from mtpsl_tf.models.remat import recompute

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_FILTERS = (64, 64, 128, 256, 512)  # stem, layer1, layer2, layer3, layer4
OUTPUT_STRIDE = 8
# ResnetDilated(dilate_scale=8) of resnet18: per layer, per block (stride, dilation conv1,
# dilation conv2). `ORIGINAL_STRIDES` are torchvision's, which decide the downsample branches.
DILATED_LAYOUT = (
    ((1, 1, 1), (1, 1, 1)),
    ((2, 1, 1), (1, 1, 1)),
    ((1, 1, 2), (1, 2, 2)),
    ((1, 2, 4), (1, 4, 4)),
)
ORIGINAL_STRIDES = (1, 2, 2, 2)


def kaiming_normal_fan_out() -> keras.initializers.Initializer:
    """torchvision ResNet's conv init: `kaiming_normal_(mode="fan_out", nonlinearity="relu")`."""
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_out", distribution="untruncated_normal")


@keras.saving.register_keras_serializable(package=PACKAGE)
class TorchConv2D(DilatedConv2D):
    """Conv2D with PyTorch's padding: `torch_padding` zeros on every side, then a VALID conv.

    Same arguments as `keras.layers.Conv2D` except `padding` (always "valid" after the explicit
    padding); `use_bias` defaults to False and the kernel initialiser to torchvision's. A
    `DilatedConv2D`, so the export can compute its dilation directly (`dilation_ops`).

    Args:
        torch_padding: zeros added before and after both spatial axes (`nn.Conv2d(padding=p)`).
    """

    def __init__(self, filters: int, kernel_size, strides=1, torch_padding: int = 0, dilation_rate=1,
                 use_bias: bool = False, kernel_initializer=None, **kwargs):
        padding = kwargs.pop("padding", "valid")  # get_config of the base class writes it
        if padding != "valid":
            raise ValueError(f"TorchConv2D pads explicitly (torch_padding); padding must be 'valid', got {padding!r}")
        if kernel_initializer is None:
            kernel_initializer = kaiming_normal_fan_out()
        super().__init__(filters, kernel_size, strides=strides, padding="valid", dilation_rate=dilation_rate,
                         use_bias=use_bias, kernel_initializer=kernel_initializer, **kwargs)
        self.torch_padding = int(torch_padding)

    def _pad(self, x):
        p = self.torch_padding
        return tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]]) if p else x

    def call(self, inputs):
        return super().call(self._pad(inputs))

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        for axis in (1, 2):
            if shape[axis] is not None:
                shape[axis] += 2 * self.torch_padding
        return super().compute_output_shape(tuple(shape))

    def get_config(self):
        config = super().get_config()
        config.update(torch_padding=self.torch_padding)
        return config


def max_pool_3x3_s2_p1(x, nonnegative: bool = False):
    """`nn.MaxPool2d(3, stride=2, padding=1)`: padding never wins the max (PyTorch pads -inf).

    x: `[B, H, W, C]` -> `[B, ceil(H/2), ceil(W/2), C]`. With `nonnegative` (x >= 0, e.g. a
    ReLU output) the padding is 0, which gives the same values (every window holds a real
    element >= 0) and the same gradient (a ReLU passes none at 0), and keeps int8 LiteRT
    working: padding with the dtype's lowest value (-3.4e38) makes the int8 converter give the
    pooled tensor a scale of ~1e36, and the residual ADD after it aborts LiteRT
    (QuantizeMultiplierSmallerThanOne in ADD's Prepare).
    """
    pad_value = 0.0 if nonnegative else x.dtype.min
    x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=pad_value)
    return tf.nn.max_pool2d(x, ksize=3, strides=2, padding="VALID")


@keras.saving.register_keras_serializable(package=PACKAGE)
class BasicBlock(keras.layers.Layer):
    """torchvision's BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    Args:
        filters: output channels.
        strides: stride of conv1 and of the downsample conv.
        dilation: dilations (= paddings) of conv1 and conv2.
        downsample: shortcut = conv1x1(strides) + BN instead of the identity.
    """

    def __init__(self, filters: int, strides: int = 1, dilation: Sequence[int] = (1, 1),
                 downsample: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.strides = strides
        self.dilation = [int(d) for d in dilation]
        self.downsample = bool(downsample)
        d1, d2 = self.dilation
        self.conv1 = TorchConv2D(filters, 3, strides, torch_padding=d1, dilation_rate=d1, name="conv1")
        self.bn1 = BatchNorm(name="bn1")
        self.conv2 = TorchConv2D(filters, 3, 1, torch_padding=d2, dilation_rate=d2, name="conv2")
        self.bn2 = BatchNorm(name="bn2")
        if self.downsample:
            self.downsample_conv = TorchConv2D(filters, 1, strides, name="downsample_conv")
            self.downsample_bn = BatchNorm(name="downsample_bn")

    def build(self, input_shape):
        out = channels_shape(self.filters)
        self.conv1.build(channels_shape(input_shape[-1]))
        for layer, shape in ((self.bn1, out), (self.conv2, out), (self.bn2, out)):
            layer.build(shape)
        if self.downsample:
            self.downsample_conv.build(channels_shape(input_shape[-1]))
            self.downsample_bn.build(out)

    def call(self, x, training=False):
        out = tf.nn.relu(self.bn1(self.conv1(x), training=training))
        out = self.bn2(self.conv2(out), training=training)
        shortcut = self.downsample_bn(self.downsample_conv(x), training=training) if self.downsample else x
        return tf.nn.relu(out + shortcut)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, strides=self.strides, dilation=list(self.dilation),
                      downsample=self.downsample)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class DilatedResNet18(keras.layers.Layer):
    """ResNet-18 with the reference's ResnetDilated(dilate_scale=8): `[B,H,W,3]` in [0, 1] ->
    layer4 `[B,ceil(H/8),ceil(W/8),filters[4]]` (exactly H/8 for multiples of 8).

    Args:
        filters: widths of the stem and of layer1..layer4 (torchvision: 64, 64, 128, 256, 512).
        remat: in training, recompute the stem and every residual block in the backward pass
            (`models.remat`): same values and gradients, less memory.

    Sub-layers carry torchvision's names: `conv1`, `bn1`, `layer{i}_{j}` (= `layer{i}.{j}`)
    with `conv1`, `bn1`, `conv2`, `bn2`, `downsample_conv` / `downsample_bn`
    (= `downsample.0` / `downsample.1`).
    """

    def __init__(self, filters: Sequence[int] = DEFAULT_FILTERS, remat: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.filters = [int(f) for f in filters]
        self.remat = bool(remat)
        if len(self.filters) != 5 or min(self.filters) <= 0:
            raise ValueError(f"the resnet18 backbone needs 5 positive widths (stem, layer1..layer4), got {self.filters}")
        self.conv1 = TorchConv2D(self.filters[0], 7, 2, torch_padding=3, name="conv1")
        self.bn1 = BatchNorm(name="bn1")
        self.blocks: List[BasicBlock] = []
        channels = self.filters[0]
        for i, layout in enumerate(DILATED_LAYOUT):
            width = self.filters[i + 1]
            for j, (stride, d1, d2) in enumerate(layout):
                # torchvision gives the first block a downsample branch when its original stride
                # is 2 or the width changes; ResnetDilated keeps it (with stride 1).
                downsample = j == 0 and (ORIGINAL_STRIDES[i] != 1 or channels != width)
                self.blocks.append(BasicBlock(width, stride, (d1, d2), downsample, name=f"layer{i + 1}_{j}"))
                channels = width

    def build(self, input_shape):
        # Explicit builds (variables depend on channels only) spare Keras a symbolic trace of
        # every nested call on the first call.
        self.conv1.build(channels_shape(input_shape[-1]))
        self.bn1.build(channels_shape(self.filters[0]))
        channels = self.filters[0]
        for block in self.blocks:
            block.build(channels_shape(channels))
            channels = block.filters

    def call(self, images, training=False):
        mean = tf.constant(IMAGENET_MEAN, tf.float32)
        std = tf.constant(IMAGENET_STD, tf.float32)
        x = (tf.cast(images, tf.float32) - mean) / std  # torchvision.transforms.Normalize
        x = self._segment(lambda h: self._stem(h, training), x, training)
        for block in self.blocks:
            x = self._segment(lambda h, block=block: block(h, training=training), x, training)
        return x

    def _stem(self, x, training):
        x = tf.nn.relu(self.bn1(self.conv1(x), training=training))
        return max_pool_3x3_s2_p1(x, nonnegative=True)  # after the ReLU

    def _segment(self, fn, x, training):
        """`fn(x)`, recomputed in the backward pass under `remat` in training."""
        if self.remat and training:
            return recompute(fn, self)(x)
        return fn(x)

    def get_config(self):
        config = super().get_config()
        config.update(filters=list(self.filters), remat=self.remat)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResNetASPP(Backbone):
    """Shared dilated ResNet-18 with one DeepLab-v3 ASPP head per task (the reference's
    `MultiTaskModel` with `ResnetDilated(resnet18)` and `DeepLabHead`s).

    Args:
        heads: ordered mapping task name -> {"channels": int, "activation": str}
            (activation: a key of `heads.ACTIVATIONS`).
        filters: 5 backbone widths (stem, layer1..layer4); default 64, 64, 128, 256, 512.
        aspp_channels: width of the ASPP branches and of the head's hidden conv (256).
        atrous_rates: ASPP dilations (12, 24, 36).
        dropout: ASPP projection dropout (0.5).
        remat: recompute the ResNet's stem and blocks in the backward pass (`DilatedResNet18`);
            the heads are not recomputed (their dropout would draw a new mask).

    Call: `model(images [B,H,W,3] in [0, 1], training)` -> `{task: [B,H,W,channels] float32,
    "feature": [B,H/8,W/8,filters[4]] float32, "shared": the same in the compute dtype}`,
    "feature" being the layer4 output every head reads ("shared" is exactly the heads' input
    tensor, for MGDA-UB). Any H, W >= 1 work; the heads upsample bilinearly to exactly H x W.
    """

    feature_stride = OUTPUT_STRIDE
    shared_output = "shared"
    input_multiple = 1  # any H, W >= 1: the heads upsample to exactly H x W
    # XLA's CPU convolutions are slow with dilation (measured: a 512x512 training step 2.6x
    # slower than without XLA); the trainer warns when --xla is set on a CPU-only machine.
    slow_under_xla_on_cpu = True

    def __init__(self, heads: Mapping[str, Mapping[str, object]], filters: Sequence[int] | None = None,
                 aspp_channels: int = ASPP_CHANNELS, atrous_rates: Sequence[int] = ATROUS_RATES,
                 dropout: float = DROPOUT, remat: bool = False, **kwargs):
        super().__init__(**kwargs)
        if not heads:
            raise ValueError("ResNetASPP needs at least one task head")
        self.heads = {name: dict(spec) for name, spec in heads.items()}
        self.filters = list(filters) if filters is not None else list(DEFAULT_FILTERS)
        self.aspp_channels = aspp_channels
        self.atrous_rates = [int(r) for r in atrous_rates]
        self.dropout = dropout
        self.remat = bool(remat)
        for name, spec in self.heads.items():
            if spec.get("activation") not in ACTIVATIONS:
                raise ValueError(f"head {name!r}: unknown activation {spec.get('activation')!r}; "
                                 f"expected one of {sorted(ACTIVATIONS)}")
        self.backbone = DilatedResNet18(self.filters, remat=self.remat, name="backbone")
        self.task_heads = {
            name: DeepLabHead(int(spec["channels"]), str(spec["activation"]), aspp_channels,
                              self.atrous_rates, dropout, name=f"head_{name}")
            for name, spec in self.heads.items()
        }

    def build(self, input_shape):
        self.backbone.build(input_shape)
        for head in self.task_heads.values():
            head.build(channels_shape(self.filters[4]))

    def call(self, images, training=False) -> Dict[str, tf.Tensor]:
        size = images.shape[1:3]
        if size[0] is None or size[1] is None:
            size = tf.shape(images)[1:3]
        feature = self.backbone(images, training=training)
        outputs = {name: head(feature, output_size=size, training=training)
                   for name, head in self.task_heads.items()}
        outputs["feature"] = tf.cast(feature, tf.float32)
        outputs[self.shared_output] = feature
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(heads=self.heads, filters=self.filters, aspp_channels=self.aspp_channels,
                      atrous_rates=list(self.atrous_rates), dropout=self.dropout, remat=self.remat)
        return config


@registry.BACKBONES.register("resnet18_aspp")
def build_resnet18_aspp(heads, variant="standard", filters=None, pretrained="", name="resnet18_aspp",
                        remat=False) -> ResNetASPP:
    """Registry entry: dilated ResNet-18 + DeepLab-v3 heads (see `ResNetASPP`).

    Args:
        heads: task name -> head spec.
        variant: only "standard".
        filters: 5 widths (stem, layer1..layer4) or None for 64, 64, 128, 256, 512. The ASPP
            width scales with the last one (256 at 512; at least 4), so tiny models stay tiny.
        pretrained: path to torchvision's resnet18 ImageNet state dict (.pth), or "" for
            random init. With weights, the model is built before they are loaded.
        remat: recompute the ResNet's stem and blocks in the backward pass (`ResNetASPP`).
    """
    if variant != "standard":
        raise ValueError(f"unknown resnet18_aspp variant {variant!r}; it has only 'standard' "
                         "(set the widths with --filters)")
    aspp_channels = 256 if filters is None else max(4, 256 * int(filters[-1]) // 512)
    model = ResNetASPP(heads=heads, filters=filters, aspp_channels=aspp_channels, remat=remat, name=name)
    if pretrained:
        from mtpsl_tf.interop.resnet import load_torchvision_resnet
        from mtpsl_tf.interop.torch_format import load_torch_file

        state_dict = load_torch_file(pretrained)  # a missing / unreadable file fails before the build
        # Built through the model so the variables get their in-model paths (checkpoint keys).
        model.build((None, None, None, 3))
        load_torchvision_resnet(model.backbone, state_dict, os.fspath(pretrained))
    return model
