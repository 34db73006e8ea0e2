"""SegNet multi-task network (mtan "split" architecture, as in the authors' code)."""

from __future__ import annotations

from typing import Dict, Mapping, Sequence

import keras
import tensorflow as tf

from mtpsl_tf.models import registry
from mtpsl_tf.models.backbone import Backbone
from mtpsl_tf.models.heads import ACTIVATIONS, TaskHead
from mtpsl_tf.models.input_size import SEGNET_INPUT_MULTIPLE
from mtpsl_tf.models.layers import PACKAGE, ArgMaxPool2D, ConvBNReLU, MaxUnpool2D
from mtpsl_tf.models.remat import recompute

VARIANT_FILTERS = {
    "standard": (64, 128, 256, 512, 512),
    "wide": (64, 128, 256, 512, 1024),
    "deep": (64, 128, 256, 512, 512),
}
STRIDE = SEGNET_INPUT_MULTIPLE  # five 2x2 poolings


class SegNetStages:
    """The encoder / decoder stages of a SegNet-shaped layer: mixed into a layer that has
    `encoder_block`, `conv_block_enc`, `pools`, `unpools`, `decoder_block`, `conv_block_dec`
    (SegNet here, the grouped mapping SegNets of the cross-task baselines)."""

    def _segment(self, fn, x, remat: bool):
        """`fn(x)`; with `remat`, recomputed in the backward pass (`models.remat`)."""
        return recompute(fn, self)(x) if remat else fn(x)

    def _encoder_stage(self, i, x, training):
        """Encoder stage i: convs then the 2x2 argmax pool -> (pooled, switches)."""
        x = self.encoder_block[i](x, training=training)
        for block in self.conv_block_enc[i]:
            x = block(x, training=training)
        return self.pools[i](x)

    def _decoder_stage(self, i, x, switches, training):
        """Decoder stage mirroring encoder stage i: unpool with its switches, then convs."""
        x = self.unpools[i]([x, switches])
        x = self.decoder_block[i](x, training=training)
        for block in self.conv_block_dec[i]:
            x = block(x, training=training)
        return x


@keras.saving.register_keras_serializable(package=PACKAGE)
class SegNet(SegNetStages, Backbone):
    """Shared SegNet encoder-decoder with one small head per task.

    Args:
        heads: ordered mapping task name -> {"channels": int, "activation": str}; the
            activation is one of `heads.ACTIVATIONS` (log_softmax, linear, l2_normalize,
            sigmoid).
        variant: "standard", "wide" (last filter 1024) or "deep" (two conv-BN-ReLU
            per block).
        filters: five widths overriding the variant's (tests use tiny widths).
        remat: in training, keep only each stage's inputs for the backward pass and recompute
            its activations there (`models.remat`; the ten encoder/decoder stages and the
            heads): same values and gradients, less memory, one more forward pass.

    Call: `model(images [B,H,W,3], training)` with H, W multiples of 32 returns a dict
    `{task: [B,H,W,channels] float32, "feature": [B,H/32,W/32,filters[4]], "shared":
    [B,H,W,filters[0]]}`; "feature" is the last max-pooled encoder output (the method's
    regularisation target), "shared" the decoder output every head reads (compute dtype).
    """

    feature_stride = STRIDE
    shared_output = "shared"
    input_multiple = STRIDE  # the unpooling switches need every pooled size even

    def __init__(
        self,
        heads: Mapping[str, Mapping[str, object]],
        variant: str = "standard",
        filters: Sequence[int] | None = None,
        remat: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.remat = bool(remat)
        if variant not in VARIANT_FILTERS:
            raise ValueError(f"unknown SegNet variant {variant!r}; expected one of {sorted(VARIANT_FILTERS)}")
        if not heads:
            raise ValueError("SegNet needs at least one task head")
        self.heads = {name: dict(spec) for name, spec in heads.items()}
        self.variant = variant
        self.filters = list(filters) if filters is not None else list(VARIANT_FILTERS[variant])
        if len(self.filters) != 5:
            raise ValueError(f"SegNet needs 5 filter widths, got {self.filters}")
        for name, spec in self.heads.items():
            if spec.get("activation") not in ACTIVATIONS:
                raise ValueError(f"head {name!r}: unknown activation {spec.get('activation')!r}; "
                                 f"expected one of {sorted(ACTIVATIONS)}")
        self._build_layers()

    def _build_layers(self):
        f, unit = self.filters, 2 if self.variant == "deep" else 1
        self.encoder_block = [ConvBNReLU(f[i], unit, name=f"encoder_block_{i}") for i in range(5)]
        self.decoder_block = [ConvBNReLU(f[max(i - 1, 0)], unit, name=f"decoder_block_{i}") for i in range(5)]
        # conv_block_enc[i] / conv_block_dec[i]: one unit for the top two stages, two below.
        self.conv_block_enc = [
            [ConvBNReLU(f[i], unit, name=f"conv_block_enc_{i}_{j}") for j in range(1 if i <= 1 else 2)]
            for i in range(5)
        ]
        self.conv_block_dec = [
            [ConvBNReLU(f[max(i - 1, 0)], unit, name=f"conv_block_dec_{i}_{j}") for j in range(1 if i <= 1 else 2)]
            for i in range(5)
        ]
        self.pools = [ArgMaxPool2D(name=f"pool_{i}") for i in range(5)]
        self.unpools = [MaxUnpool2D(name=f"unpool_{i}") for i in range(5)]
        self.task_heads = {
            name: TaskHead(self.filters[0], int(spec["channels"]), str(spec["activation"]), name=f"head_{name}")
            for name, spec in self.heads.items()
        }

    def call(self, images, training=False) -> Dict[str, tf.Tensor]:
        self.check_input_size(images.shape[1], images.shape[2])
        x, switches = images, []
        remat = self.remat and training  # recomputation only serves a backward pass
        for i in range(5):
            x, s = self._segment(lambda h, i=i: self._encoder_stage(i, h, training), x, remat)
            switches.append(tf.stop_gradient(s))  # 0/1 window masks: no gradient, as in the plain pass
        feature = x
        # Decoder stage k mirrors encoder stage 4-k: decoder_block[-k-1], conv_block_dec[-k-1].
        for i in range(4, 0, -1):
            x = self._segment(lambda h, i=i: self._decoder_stage(i, h, switches[i], training), x, remat)
        x = self._segment(lambda h: self._decoder_stage(0, h, switches[0], training), x, remat)
        # The heads are their own segment so that `x`, the tensor they read, is a real tensor of
        # the outer graph: MGDA-UB (`shared_output`) differentiates the losses with respect to it.
        names = list(self.task_heads)
        preds = self._segment(lambda h: [head(h) for head in self.task_heads.values()], x, remat)
        outputs = dict(zip(names, preds))
        outputs["feature"] = tf.cast(feature, tf.float32)
        outputs[self.shared_output] = x  # the heads' own input: MGDA-UB differentiates it
        return outputs

    def last_shared_kernel(self):
        """The decoder runs its blocks from index 4 down to 0: conv_block_dec[0] is last."""
        return self.conv_block_dec[0][-1].convs[-1].kernel

    def get_config(self):
        config = super().get_config()
        config.update(heads=self.heads, variant=self.variant, filters=self.filters, remat=self.remat)
        return config


@registry.BACKBONES.register("segnet")
def build_segnet(heads, variant="standard", filters=None, pretrained="", name="segnet", remat=False) -> SegNet:
    """Registry entry: builds a SegNet from task heads (see `SegNet`). SegNet is trained from
    scratch (as the reference): `pretrained` must be empty."""
    if pretrained:
        raise ValueError(f"--pretrained={pretrained!r}: the segnet backbone has no pretrained weights "
                         "(the reference trains it from scratch); leave --pretrained empty")
    return SegNet(heads=heads, variant=variant, filters=filters, remat=remat, name=name)
