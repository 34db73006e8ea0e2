"""Semantic segmentation: C-way log-softmax head, NLL over labelled pixels (-1 = ignore)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mtpsl_tf.metrics import ConfusionMatrix
from mtpsl_tf.tasks.base import HIGHER, Task, pseudo_label_terms
from mtpsl_tf.tasks.registry import TASKS

IGNORE = -1


def sample_gumbel(shape, seed) -> tf.Tensor:
    """Standard Gumbel noise `-log(-log(u))`, u ~ U(0, 1), from a stateless int `[2]` seed.

    Philox is pinned so that eager and XLA-compiled steps draw the same numbers.
    """
    tiny = np.finfo(np.float32).tiny
    uniform = tf.random.stateless_uniform(shape, seed=seed, minval=tiny, maxval=1.0, alg="philox")
    return -tf.math.log(-tf.math.log(uniform))


def gumbel_softmax_hard(logits, noise, tau: float = 1.0) -> tf.Tensor:
    """Hard Gumbel-softmax over the last axis with a straight-through gradient.

    Forward: one-hot of argmax(logits + noise). Backward: the gradient of
    softmax((logits + noise) / tau). Same construction as PyTorch's `gumbel_softmax(hard=True)`:
    `y_hard - stop_gradient(y_soft) + y_soft`.
    """
    perturbed = logits + noise
    soft = tf.nn.softmax(perturbed / tau, axis=-1)
    hard = tf.one_hot(tf.argmax(perturbed, axis=-1), tf.shape(logits)[-1], dtype=soft.dtype)
    return hard - tf.stop_gradient(soft) + soft


def one_hot_with_ignore(label, channels: int, dtype=tf.float32) -> tf.Tensor:
    """int `[B,H,W]` (-1 = ignore) -> float one-hot `[B,H,W,channels]`, ignored pixels all-zero."""
    label = tf.cast(label, tf.int32)
    valid = label >= 0
    one_hot = tf.one_hot(tf.where(valid, label, 0), channels, dtype=dtype)
    return one_hot * tf.cast(valid, dtype)[..., None]


def palette(num_classes: int) -> np.ndarray:
    """`[C, 3]` float colours in [0,1], distinct and deterministic (Pascal-VOC bit trick)."""
    colours = np.zeros((num_classes, 3), np.float32)
    for c in range(num_classes):
        value, code = c + 1, np.zeros(3)
        for shift in range(8):
            for channel in range(3):
                code[channel] += ((value >> channel) & 1) << (7 - shift)
            value >>= 3
        colours[c] = code / 255.0
    return colours


@TASKS.register("semantic")
@TASKS.register("semseg")  # PASCAL-Context's name
class Semantic(Task):
    """Per-pixel classification.

    Labels: int32 `[B,H,W]` in [0, C) or -1 (ignore). Outputs: log-probabilities `[B,H,W,C]`.
    Loss of one image: mean NLL over its labelled pixels.
    """

    activation = "log_softmax"
    uncertainty_factor = 1.0  # a classification (Kendall et al. 2018)
    metric_directions = {"miou": HIGHER, "pixel_acc": HIGHER}
    primary_metric = "miou"
    mapping_needs_noise = True
    ssl_threshold = 0.95  # the authors' seg_con pseudo-label confidence
    # AddIgnoreRegions: an all-zero map means "not annotated" (human parts) -> all ignore.
    unannotated_when_all_zero = False

    def __init__(self, num_classes: int, name: str = "semantic"):
        if num_classes < 2:
            raise ValueError(f"task {name!r}: num_classes must be >= 2, got {num_classes}")
        self.name = name
        self.num_classes = num_classes
        self.channels = num_classes

    def loss_terms(self, pred, label):
        label = tf.cast(label, tf.int32)
        valid = tf.logical_and(label >= 0, label < self.num_classes)
        safe = tf.where(valid, label, 0)
        nll = -tf.gather(pred, safe, axis=-1, batch_dims=3)
        valid_f = tf.cast(valid, tf.float32)
        return tf.reduce_sum(nll * valid_f, axis=[1, 2]), tf.reduce_sum(valid_f, axis=[1, 2])

    def ssl_consistency(self, pred, target, valid, threshold):
        """Pseudo-labels: NLL of the other view's argmax where its probability > threshold
        (the authors' `seg_con`)."""
        target = tf.stop_gradient(tf.cast(target, tf.float32))
        pseudo = tf.argmax(target, axis=-1, output_type=tf.int32)
        confidence = tf.exp(tf.reduce_max(target, axis=-1))
        nll = -tf.gather(tf.cast(pred, tf.float32), pseudo, axis=-1, batch_dims=3)
        return pseudo_label_terms(nll, confidence, valid, threshold)

    @classmethod
    def perceptual_form(cls, output):
        """Probabilities (the head outputs log-probabilities)."""
        return tf.exp(tf.cast(output, tf.float32))

    def make_metric(self):
        return ConfusionMatrix(self.num_classes, name=f"{self.name}_confusion")

    def paper_scorer(self, workers: int = 1):
        """MTL-PyTorch's eval_semseg / eval_human_parts (argmax, nearest resize, mIoU over all
        classes)."""
        from mtpsl_tf.metrics.original_size import SegmentationScorer

        return SegmentationScorer(self.num_classes, skip_uniform=self.unannotated_when_all_zero)

    def update_metric(self, metric, label, pred):
        metric.update_state(tf.cast(label, tf.int32), tf.argmax(pred, axis=-1, output_type=tf.int32))

    def label_signature(self, height, width):
        return tf.TensorSpec([height, width], tf.int32)

    def check_label(self, label, where):
        if label.ndim != 2:
            raise ValueError(f"{where}: semantic label must be [H, W], got shape {label.shape}")
        bad = (label < IGNORE) | (label >= self.num_classes)
        if bad.any():
            raise ValueError(f"{where}: semantic label values must be -1 (ignore) or in [0, {self.num_classes}), "
                             f"found {np.unique(label[bad])[:5]}")

    def visualise(self, value):
        if value.shape.rank == 4:  # predictions: log-probabilities
            value = tf.argmax(value, axis=-1, output_type=tf.int32)
        colours = tf.constant(np.concatenate([palette(self.num_classes), np.zeros((1, 3), np.float32)]))
        index = tf.where(value < 0, self.num_classes, value)  # ignore -> black
        return tf.gather(colours, index)

    @classmethod
    def add_ignore_regions(cls, label):
        if not cls.unannotated_when_all_zero:
            return label
        label = tf.convert_to_tensor(label)
        ignore = tf.fill(tf.shape(label), tf.cast(IGNORE, label.dtype))
        return tf.where(tf.reduce_any(label != 0), label, ignore)

    @classmethod
    def mapping_prediction(cls, pred, noise=None, seed=None):
        """Hard Gumbel-softmax sample (tau 1, straight-through) of the log-probabilities;
        `noise` broadcastable to `pred` (zeros: the argmax one-hot) or a stateless `seed`."""
        pred = tf.convert_to_tensor(pred)
        if noise is None:
            if seed is None:
                raise ValueError("semantic preprocessing needs gumbel_noise or a seed")
            noise = sample_gumbel(tf.shape(pred), seed)
        return gumbel_softmax_hard(pred, tf.cast(noise, pred.dtype), tau=1.0)

    @classmethod
    def mapping_label(cls, label, channels, dtype=tf.float32):
        return one_hot_with_ignore(label, channels, dtype)

    @classmethod
    def label_annotated(cls, label):
        """Any pixel not ignored (>= 0, as `one_hot_with_ignore`)."""
        return tf.reduce_any(tf.cast(label, tf.int32) >= 0, axis=[1, 2])


@TASKS.register("human_parts")
class HumanParts(Semantic):
    """PASCAL-Context human parts: 7-way segmentation whose all-zero map means the image
    has no annotated person (AddIgnoreRegions makes it all ignore)."""

    unannotated_when_all_zero = True

    def __init__(self, num_classes: int = 7, name: str = "human_parts"):
        super().__init__(num_classes, name=name)
