"""Saliency (PASCAL-Context): 1-channel LOGIT head, balanced binary cross-entropy per image.

Also the shared pieces of the binary logit tasks (saliency, edges): the balanced cross-entropy
terms and the `BinaryLogitTask` base (label format, checks, visualisation).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mtpsl_tf.metrics import SaliencyMetrics
from mtpsl_tf.tasks.base import HIGHER, Task, pseudo_label_terms
from mtpsl_tf.tasks.registry import TASKS

IGNORE = -1.0
_IGNORE_COLOUR = (0.1, 0.1, 0.5)  # labels: ignored pixels in dark blue (black = negative)


# Where the balanced cross-entropy's weight w = #negatives / #valid pixels is counted.
WEIGHT_OVER = ("batch", "image")


def balanced_bce_terms(logits: tf.Tensor, label: tf.Tensor, pos_weight=None, weight_over: str = "image"):
    """Per-image terms of MTL-PyTorch's BalancedCrossEntropyLoss, on logits.

    Per pixel, bce = max(x, 0) - x * y + log(1 + exp(-|x|)) (the reference's numerically stable
    form of the binary cross-entropy of sigmoid(x)), y = [label >= 0.5]. Pixels with label < 0
    (-1 = ignore) take no part. Per image:
        numerator = w * sum_{positives} bce + (1 - w) * sum_{negatives} bce
        count     = number of non-ignored pixels
    w = `pos_weight` if given, else #negatives / #non-ignored pixels counted over the whole
    (replica's) batch (`weight_over="batch"`, the reference's BalancedCrossEntropyLoss) or over
    THAT IMAGE (`"image"`, HED-style).

    The reference's size_average divides the batch sum by every label element (B*H*W); per image
    that is H*W, which equals `count` whenever no pixel is ignored (its PASCAL pipeline resizes,
    never pads). With ignored pixels we divide by the non-ignored ones (the reference would count
    void pixels in the denominator, and with a fixed pos_weight would not even mask them out).

    Args:
        logits, label: float `[B, H, W, 1]`.
        pos_weight: None or a float in (0, 1).
        weight_over: "batch" or "image" (used when pos_weight is None).

    Returns:
        (numerator, count), float32 `[B]` each.
    """
    logits = tf.cast(logits, tf.float32)
    label = tf.cast(label, tf.float32)
    valid = label >= 0.0
    positive = tf.cast(valid & (label >= 0.5), tf.float32)
    negative = tf.cast(valid & (label < 0.5), tf.float32)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=positive, logits=logits)
    axes = [1, 2, 3]
    loss_pos = tf.reduce_sum(bce * positive, axis=axes)
    loss_neg = tf.reduce_sum(bce * negative, axis=axes)
    count = tf.reduce_sum(tf.cast(valid, tf.float32), axis=axes)
    if pos_weight is None and weight_over == "batch":
        weight = tf.math.divide_no_nan(tf.reduce_sum(negative), tf.reduce_sum(count)) * tf.ones_like(count)
    elif pos_weight is None and weight_over == "image":
        weight = tf.math.divide_no_nan(tf.reduce_sum(negative, axis=axes), count)
    elif pos_weight is None:
        raise ValueError(f"balanced_bce_terms: weight_over must be one of {WEIGHT_OVER}, got {weight_over!r}")
    else:
        weight = tf.fill(tf.shape(count), tf.constant(pos_weight, tf.float32))
    return weight * loss_pos + (1.0 - weight) * loss_neg, count


class BinaryLogitTask(Task):
    """A per-pixel binary task whose head outputs LOGITS (activation "linear").

    Labels: float32 `[B,H,W,1]`, 1 = positive, 0 = negative, -1 = ignore (e.g. padding).
    Outputs: logits `[B,H,W,1]`; metrics and `visualise` apply the sigmoid themselves.
    """

    channels = 1
    activation = "linear"
    uncertainty_factor = 1.0  # a classification (Kendall et al. 2018)
    kind = "binary"  # for messages
    ssl_threshold = 0.95  # as semantic's pseudo-label confidence (our choice)

    def update_metric(self, metric, label, pred):
        metric.update_state(label, tf.sigmoid(tf.cast(pred, tf.float32)))

    def ssl_consistency(self, pred, target, valid, threshold):
        """Pseudo-labels as semantic's, for a two-class problem: binary cross-entropy of the
        other view's hard decision where max(p, 1 - p) > threshold (our choice)."""
        probability = tf.sigmoid(tf.stop_gradient(tf.cast(target, tf.float32)))[..., 0]
        pseudo = tf.cast(probability >= 0.5, tf.float32)
        confidence = tf.maximum(probability, 1.0 - probability)
        nll = tf.nn.sigmoid_cross_entropy_with_logits(labels=pseudo, logits=tf.cast(pred, tf.float32)[..., 0])
        return pseudo_label_terms(nll, confidence, valid, threshold)

    @classmethod
    def perceptual_form(cls, output):
        """Probabilities (the head outputs logits)."""
        return tf.sigmoid(tf.cast(output, tf.float32))

    @classmethod
    def mapping_prediction(cls, pred, noise=None, seed=None):
        """The probability sigmoid(logit) (issue #11's choice, see docs/DESIGN.md)."""
        return tf.sigmoid(tf.convert_to_tensor(pred))

    @classmethod
    def mapping_label(cls, label, channels, dtype=tf.float32):
        """The {0, 1} label with ignored (-1) pixels zero."""
        label = tf.cast(label, dtype)
        return tf.where(label < 0, tf.zeros_like(label), label)

    @classmethod
    def label_annotated(cls, label):
        """Any pixel not ignored (>= 0)."""
        return tf.reduce_any(label >= 0, axis=[1, 2, 3])

    def label_signature(self, height, width):
        return tf.TensorSpec([height, width, 1], tf.float32)

    def check_label(self, label, where):
        if label.ndim != 3 or label.shape[-1] != 1:
            raise ValueError(f"{where}: {self.kind} label must be [H, W, 1], got shape {label.shape}")
        bad = ~np.isin(label, (IGNORE, 0.0, 1.0))
        if bad.any():
            raise ValueError(f"{where}: {self.kind} label values must be 1, 0 or -1 (ignore), "
                             f"found {np.unique(label[bad])[:5]}")

    def visualise(self, value):
        """Grey map `[B,H,W,3]`.

        Labels and logits have the same shape, so an image whose values are all in {-1, 0, 1}
        is shown as a label (1 white, 0 black, -1 dark blue); anything else is taken as logits
        and shown as sigmoid(logit) in grey.
        """
        value = tf.cast(value[..., 0], tf.float32)
        is_label = tf.reduce_all((value == IGNORE) | (value == 0.0) | (value == 1.0),
                                 axis=[1, 2], keepdims=True)
        grey = tf.where(is_label, tf.clip_by_value(value, 0.0, 1.0), tf.sigmoid(value))
        rgb = tf.repeat(grey[..., None], 3, axis=-1)
        ignored = (is_label & (value < 0.0))[..., None]
        return tf.where(ignored, tf.constant(_IGNORE_COLOUR, tf.float32), rgb)


@TASKS.register("saliency")
@TASKS.register("sal")  # PASCAL-Context's name
class Saliency(BinaryLogitTask):
    """Saliency estimation (MTL-PyTorch 'sal').

    Head: 1 channel, activation "linear": the model outputs LOGITS; the metric and `visualise`
    apply the sigmoid. Labels: float32 `[B,H,W,1]`, 1 salient, 0 not, -1 ignore.
    Loss of one image: `balanced_bce_terms` over its non-ignored pixels with w = the fraction of
    negative pixels among the valid pixels of the whole batch (`weight_over="batch"`, the default:
    the reference's BalancedCrossEntropyLoss(size_average=True)) or of the image alone
    (`"image"`). The batch is the replica's batch as passed to `loss_terms`, every image of it:
    `loss_terms` does not see the label masks, so in partial-label settings the labels of
    images not labelled for saliency also enter w (they are real labels, only not used as
    supervision). With the per-image weight an image whose valid pixels are all negative (w = 1)
    or all positive (w = 0) has zero loss and gives no gradient; per batch that only happens when
    the whole batch is one-sided.
    Metrics: `SaliencyMetrics` (`miou` over the 15 thresholds 0.2..0.9, as reported by MTPSL's
    PASCAL table, and `maxF`).

    Args:
        name: task name.
        weight_over: "batch" (the reference) or "image": where w is counted.
    """

    kind = "saliency"
    metric_directions = {"miou": HIGHER, "maxF": HIGHER}
    primary_metric = "miou"

    def __init__(self, name: str = "sal", weight_over: str = "batch"):
        if weight_over not in WEIGHT_OVER:
            raise ValueError(f"task {name!r}: weight_over must be one of {WEIGHT_OVER}, got {weight_over!r}")
        self.name = name
        self.weight_over = weight_over

    def loss_terms(self, pred, label):
        return balanced_bce_terms(pred, label, pos_weight=None, weight_over=self.weight_over)

    def make_metric(self):
        return SaliencyMetrics(name=f"{self.name}_metrics")

    def paper_scorer(self, workers: int = 1):
        """MTL-PyTorch's eval_sal on the saved 8-bit PNG (metrics/original_size.py)."""
        from mtpsl_tf.metrics.original_size import SaliencyScorer

        return SaliencyScorer()
