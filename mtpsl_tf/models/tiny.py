"""A three-convolution encoder-decoder for seconds-long smoke runs (`--backbone=tiny`).

Not a network of the paper: it exercises the training machinery (data, methods without a
mapping net, loss weightings, checkpoints, resume, distribution) with ~10 % of SegNet's
layers, so a run's graph traces in about a third of the time. Use it to check a new dataset, task or flagfile
before a real run; the test suite uses it wherever a test is about the machinery rather than
a particular network.
"""

from __future__ import annotations

from typing import Dict, Mapping, Sequence

import keras
import tensorflow as tf

from mtpsl_tf.models import registry
from mtpsl_tf.models.backbone import Backbone
from mtpsl_tf.models.heads import TaskHead, check_activation
from mtpsl_tf.models.layers import PACKAGE, BatchNorm, ConvBNReLU, conv2d

DEFAULT_FILTERS = (16, 16, 32, 32, 32)


@keras.saving.register_keras_serializable(package=PACKAGE)
class TinyNet(Backbone):
    """conv-BN-ReLU (filters[0]) -> 2x2 max pool -> conv-BN-ReLU (filters[4], the "feature")
    -> 2x nearest upsampling -> conv-BN (filters[0], "shared") -> one head per task.

    "shared" has no ReLU: with a few channels a ReLU output is all zero over flat image
    regions, and the normal head's plain L2 normalisation (the reference's, no epsilon) of a
    zero vector is NaN.

    Args:
        heads: ordered mapping task name -> {"channels": int, "activation": str}.
        filters: five widths, the layout of SegNet's `--filters`; the net uses the first and
            the last.

    Call: `model(images [B,H,W,3], training)` with even H, W returns `{task: [B,H,W,channels]
    float32, "feature": [B,H/2,W/2,filters[4]] float32, "shared": [B,H,W,filters[0]]}`.
    """

    feature_stride = 2
    input_multiple = 2
    shared_output = "shared"

    def __init__(self, heads: Mapping[str, Mapping[str, object]], filters: Sequence[int] | None = None, **kwargs):
        super().__init__(**kwargs)
        if not heads:
            raise ValueError("TinyNet needs at least one task head")
        self.heads = {name: dict(spec) for name, spec in heads.items()}
        self.filters = list(filters) if filters is not None else list(DEFAULT_FILTERS)
        if len(self.filters) != 5:
            raise ValueError(f"TinyNet takes 5 filter widths (SegNet's layout), got {self.filters}")
        for spec in self.heads.values():
            check_activation(spec.get("activation"))
        self.encoder = ConvBNReLU(self.filters[0], name="encoder")
        self.bottleneck = ConvBNReLU(self.filters[4], name="bottleneck")
        self.decoder = conv2d(self.filters[0], 3, name="decoder")
        self.decoder_norm = BatchNorm(name="decoder_bn")
        self.task_heads = {name: TaskHead(self.filters[0], int(spec["channels"]), str(spec["activation"]),
                                          name=f"head_{name}") for name, spec in self.heads.items()}

    def call(self, images, training=False) -> Dict[str, tf.Tensor]:
        self.check_input_size(images.shape[1], images.shape[2])
        x = self.encoder(images, training=training)
        feature = self.bottleneck(tf.nn.max_pool2d(x, 2, 2, "VALID"), training=training)
        shared = self.decoder_norm(self.decoder(tf.repeat(tf.repeat(feature, 2, axis=1), 2, axis=2)),
                                   training=training)
        outputs = {name: head(shared) for name, head in self.task_heads.items()}
        outputs["feature"] = tf.cast(feature, tf.float32)
        outputs[self.shared_output] = shared
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(heads=self.heads, filters=self.filters)
        return config


@registry.BACKBONES.register("tiny")
def build_tiny(heads, variant="standard", filters=None, pretrained="", name="tiny", remat=False) -> TinyNet:
    """Registry entry: builds a `TinyNet` (smoke runs). It has no variants, no pretrained
    weights and nothing to recompute."""
    for flag, value, default in (("variant", variant, "standard"), ("pretrained", pretrained, ""),
                                 ("remat_backbone", remat, False)):
        if value != default:
            raise ValueError(f"--{flag}={value!r}: the tiny backbone does not take it (leave it at {default!r})")
    return TinyNet(heads=heads, filters=filters, name=name)
