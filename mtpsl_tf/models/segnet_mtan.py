"""MTAN: the Multi-Task Attention Network (Liu, Johns, Davison, CVPR 2019) over our SegNet.

The shared SegNet is `segnet.SegNet` (SPEC section 2, the authors' MTPSL SegNet); on top of it
each task has soft attention gates, as lorenmt/mtan's `im2im_pred/model_segnet_mtan.py`:

Encoder stage j (0..4), per task t, on the shared stage's first output e0_j (after
`encoder_block[j]`) and last output e1_j (after `conv_block_enc[j]`, before pooling):

    g = encoder_gate[t][j](e0_j)                      j = 0
    g = encoder_gate[t][j](concat(e0_j, a_{j-1}))     j > 0
    a_j = maxpool2x2(encoder_att_block[j](g * e1_j))  shared conv3x3-BN-ReLU -> f[min(j+1, 4)]

Decoder stage i (4..0, the stage mirroring encoder stage i), on the shared stage's unpooled
input u_i and its output d_i:

    b = decoder_att_block[i](upsample2x(previous))    previous = a_4, then the last stage's y
    y_i = decoder_gate[t][i](concat(u_i, b)) * d_i    widths: f[i-1] (f0 for i = 0), f4 for i = 4

and the task's head reads y_0. A gate is conv1x1-BN-ReLU-conv1x1-BN-sigmoid, upsample2x is
bilinear with align_corners=True (`F.interpolate(scale_factor=2, align_corners=True)`). The
gates are per task (`MTANBranch`); the attention conv blocks are shared by all tasks (as in
mtan: one `encoder_block_att` / `decoder_block_att` list) and so are their BatchNorm
statistics, updated once per task and step, in task order, as PyTorch's repeated module calls.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

import keras
import tensorflow as tf

from mtpsl_tf.models import registry
from mtpsl_tf.models.heads import TaskHead
from mtpsl_tf.models.layers import PACKAGE, BatchNorm, ConvBNReLU, conv2d
from mtpsl_tf.models.segnet import SegNet

STAGES = 5


def upsample2x_align_corners(x):
    """`F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)` in NHWC:
    `[B,h,w,C] -> [B,2h,2w,C]`, in x's dtype. ResizeBilinear with align_corners is a TFLite
    builtin (RESIZE_BILINEAR) and compiles under XLA."""
    size = 2 * tf.shape(x)[1:3]
    up = tf.raw_ops.ResizeBilinear(images=x, size=size, align_corners=True, half_pixel_centers=False)
    return tf.cast(up, x.dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
class AttentionGate(keras.layers.Layer):
    """mtan's `att_layer`: conv1x1 -> BN -> ReLU -> conv1x1 -> BN -> sigmoid, `[B,H,W,Cin] ->
    [B,H,W,filters]` in (0, 1).

    Args:
        filters: width of both 1x1 convs (mtan uses the gated feature's width for both).
    """

    def __init__(self, filters: int, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv0 = conv2d(filters, 1, name="conv0")
        self.bn0 = BatchNorm(name="bn0")
        self.conv1 = conv2d(filters, 1, name="conv1")
        self.bn1 = BatchNorm(name="bn1")

    def call(self, x, training=False):
        x = tf.nn.relu(self.bn0(self.conv0(x), training=training))
        return tf.sigmoid(self.bn1(self.conv1(x), training=training))

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class MTANBranch(keras.layers.Layer):
    """One task's own layers: its 5 encoder gates, 5 decoder gates and its head.

    Args:
        filters: the SegNet's 5 widths; encoder gate j has width f[j], decoder gate i
            f[max(i-1, 0)] (the width of decoder stage i's output, which it gates).
        channels, activation: the task head (`heads.TaskHead`, on width f[0]).

    A container: `SegNetMTAN.call` applies the gates between the shared blocks, so all of a
    task's unshared variables sit under one layer (`Backbone.head_layers`).
    """

    def __init__(self, filters: Sequence[int], channels: int, activation: str, **kwargs):
        super().__init__(**kwargs)
        self.filters = [int(f) for f in filters]
        self.channels = int(channels)
        self.activation = str(activation)
        f = self.filters
        # Sublayer names carry the branch's: they are called from SegNetMTAN.call, outside this
        # layer's name scope, and their variable paths (checkpoint keys) must be unique.
        self.encoder_gates = [AttentionGate(f[j], name=f"{self.name}_encoder_att_{j}") for j in range(STAGES)]
        self.decoder_gates = [AttentionGate(f[max(i - 1, 0)], name=f"{self.name}_decoder_att_{i}")
                              for i in range(STAGES)]
        self.head = TaskHead(f[0], self.channels, self.activation, name=f"{self.name}_head")
        # Never called itself: its sublayers build on first use inside SegNetMTAN.call.
        self.built = True

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, channels=self.channels, activation=self.activation)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class SegNetMTAN(SegNet):
    """SegNet with MTAN task attention (module docstring).

    Args: as `SegNet` (heads, variant, filters). The variant shapes the shared SegNet only;
    the attention conv blocks are single conv-BN-ReLU units, as in mtan.

    Call: `model(images [B,H,W,3], training)`, H, W multiples of 32 -> `{task: [B,H,W,channels]
    float32, "feature": [B,H/32,W/32,f4]}`; "feature" is the shared encoder's last max-pooled
    output, as SegNet's (the MTPSL regulariser's target and mapping-encoder shape).
    """

    shared_output = None  # each head reads its own attention-gated feature

    def _build_layers(self):
        super()._build_layers()
        f = self.filters
        self.encoder_block_att = [ConvBNReLU(f[min(j + 1, STAGES - 1)], name=f"encoder_block_att_{j}")
                                  for j in range(STAGES)]
        # mtan: decoder_block_att[i] maps to f[i-1] for 1 <= i <= 3, f0 for i = 0 and f4 for i = 4.
        widths = [f[0], f[0], f[1], f[2], f[4]]
        self.decoder_block_att = [ConvBNReLU(widths[i], name=f"decoder_block_att_{i}") for i in range(STAGES)]
        self.branches = {
            name: MTANBranch(f, int(spec["channels"]), str(spec["activation"]), name=f"mtan_{name}")
            for name, spec in self.heads.items()
        }
        self.task_heads = {name: branch.head for name, branch in self.branches.items()}

    def head_layers(self) -> Dict[str, keras.layers.Layer]:
        """Task -> its `MTANBranch` (gates and head: everything the task does not share)."""
        return dict(self.branches)

    def _shared(self, images, training):
        """The shared SegNet pass: per encoder stage (first, last) outputs, the max-pooled
        feature, per decoder stage (unpooled input, output), decoder stages in run order."""
        x, switches, encoder = images, [], []
        for i in range(STAGES):
            first = self.encoder_block[i](x, training=training)
            x = first
            for block in self.conv_block_enc[i]:
                x = block(x, training=training)
            encoder.append((first, x))
            x, s = self.pools[i](x)
            switches.append(s)
        feature, decoder = x, []
        for i in reversed(range(STAGES)):
            unpooled = self.unpools[i]([x, switches[i]])
            x = self.decoder_block[i](unpooled, training=training)
            for block in self.conv_block_dec[i]:
                x = block(x, training=training)
            decoder.append((unpooled, x))
        return encoder, feature, decoder

    def _attend(self, branch: MTANBranch, encoder: List, decoder: List, training):
        """One task's attention path -> its gated last decoder feature `[B,H,W,f0]`."""
        a = None
        for j, (first, last) in enumerate(encoder):
            gate_input = first if a is None else tf.concat([first, a], axis=-1)
            gated = branch.encoder_gates[j](gate_input, training=training) * last
            a = self.encoder_block_att[j](gated, training=training)
            a = tf.nn.max_pool2d(a, 2, 2, "VALID")
        for k, (unpooled, out) in enumerate(decoder):
            i = STAGES - 1 - k
            b = self.decoder_block_att[i](upsample2x_align_corners(a), training=training)
            a = branch.decoder_gates[i](tf.concat([unpooled, b], axis=-1), training=training) * out
        return a

    def call(self, images, training=False) -> Dict[str, tf.Tensor]:
        self.check_input_size(images.shape[1], images.shape[2])
        encoder, feature, decoder = self._shared(images, training)
        outputs = {}
        for name, branch in self.branches.items():
            outputs[name] = branch.head(self._attend(branch, encoder, decoder, training))
        outputs["feature"] = tf.cast(feature, tf.float32)
        return outputs


@registry.BACKBONES.register("segnet_mtan")
def build_segnet_mtan(heads, variant="standard", filters=None, pretrained="", name="segnet_mtan",
                      remat=False) -> SegNetMTAN:
    """Registry entry: a SegNetMTAN from task heads (see `SegNetMTAN`); trained from scratch
    as mtan: `pretrained` must be empty. No recomputation (`remat`) yet."""
    if remat:
        raise ValueError("--remat_backbone is not implemented for --backbone=segnet_mtan (its attention "
                         "branches read every encoder stage); use --noremat_backbone, or --backbone=segnet")
    if pretrained:
        raise ValueError(f"--pretrained={pretrained!r}: the segnet_mtan backbone has no pretrained weights "
                         "(mtan trains it from scratch); leave --pretrained empty")
    return SegNetMTAN(heads=heads, variant=variant, filters=filters, name=name)
