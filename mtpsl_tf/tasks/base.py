"""What every task module provides: head spec, masked per-image loss, metrics and their
directions, colouring, how its label behaves under geometric augmentation, and how its
prediction and label enter a cross-task mapping (MTPSL)."""

from __future__ import annotations

import abc
from typing import Dict, Mapping, Tuple

import numpy as np
import tensorflow as tf

HIGHER, LOWER = "higher", "lower"
# How a label map is resampled by geometric augmentation.
NEAREST, SMOOTH = "nearest", "smooth"


def safe_ratio(total: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
    """total / count, and 0 where count == 0 (an image with no valid pixel adds no loss;
    the reference would produce NaN there and poison the step)."""
    return tf.math.divide_no_nan(total, count)


class Task(abc.ABC):
    """A dense prediction task.

    Attributes:
        name: key of this task in model outputs, labels and label masks.
        channels: head output channels.
        activation: head activation name (see models.heads.ACTIVATIONS).
        metric_directions: metric name -> "higher" / "lower" is better.
        primary_metric: the metric Delta-MTL and model selection use.
        label_resampling: NEAREST (class ids, binary maps, depth: nearest neighbour) or SMOOTH
            (continuous fields, interpolated like the image: bilinear in the `mtan` policy,
            cubic in `mtl_pytorch`).
        mapping_needs_noise: `mapping_prediction` samples noise (needs `noise` or `seed`).
        ssl_threshold: default threshold of `ssl_consistency` (`--ssl_thresholds` overrides).

    The label and mapping hooks are classmethods: they describe the KIND of task, so the
    augmentation and consistency code can also use a class looked up by name in TASKS.
    """

    label_resampling = NEAREST
    mapping_needs_noise = False
    # c_t of the uncertainty weighting's L_t / (c_t sigma_t^2) + log sigma_t (Kendall et al.
    # 2018): 2 for a regression (Gaussian likelihood), 1 for a classification (softmax).
    uncertainty_factor = 2.0
    # The SSL baseline's agreement threshold for this kind (see `ssl_consistency`).
    ssl_threshold = 0.1

    name: str
    channels: int
    activation: str
    metric_directions: Mapping[str, str]
    primary_metric: str

    @property
    def head_spec(self) -> Dict[str, object]:
        return {"channels": self.channels, "activation": self.activation}

    @abc.abstractmethod
    def loss_terms(self, pred: tf.Tensor, label: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """Per-image loss numerator and valid-pixel count, both `[B]` float32."""

    def per_image_loss(self, pred: tf.Tensor, label: tf.Tensor) -> tf.Tensor:
        """`[B]`: the reference loss of each image on its own (SPEC section 3)."""
        total, count = self.loss_terms(pred, label)
        return safe_ratio(total, count)

    @abc.abstractmethod
    def make_metric(self):
        """A fresh streaming keras Metric whose `result()` is a dict keyed by metric name."""

    @abc.abstractmethod
    def update_metric(self, metric, label: tf.Tensor, pred: tf.Tensor) -> None:
        """Feeds one batch of labels and model outputs into `metric`."""

    @abc.abstractmethod
    def label_signature(self, height: int | None, width: int | None) -> tf.TensorSpec:
        """The label's TensorSpec for one example."""

    @abc.abstractmethod
    def check_label(self, label: np.ndarray, where: str) -> None:
        """Raises ValueError naming `where` if a numpy label is malformed."""

    @abc.abstractmethod
    def visualise(self, value: tf.Tensor) -> tf.Tensor:
        """Prediction or label `[B,H,W,C]` -> displayable `[B,H,W,3]` float in [0,1]."""

    def paper_scorer(self, workers: int = 1):
        """A scorer of the `paper` evaluation protocol (`metrics/original_size.py`): how one
        image's network output is resized to its label's original size and scored there.
        Default: bilinear resize and this task's streaming metric. `workers`: processes a
        scorer may use (the edge odsF)."""
        from mtpsl_tf.metrics.original_size import StreamingScorer

        del workers
        return StreamingScorer(self)

    # ------------------------------------------------------------------ label geometry
    @classmethod
    def mirror_label_values(cls, label: tf.Tensor) -> tf.Tensor:
        """The values of a label map after it was mirrored left-right (the map itself is
        already reversed); default unchanged. Vector fields negate their x component."""
        return label

    @classmethod
    def zoom_label(cls, label: tf.Tensor, scale) -> tf.Tensor:
        """The label after a zoom by `scale` (>1 brings the scene closer); default unchanged.
        Depth divides by the scale (the authors' RandomScaleCrop)."""
        del scale
        return label

    @classmethod
    def rotate_label_values(cls, label: tf.Tensor, angle) -> tf.Tensor:
        """The values of a label map whose image turns by `angle` degrees in-plane (the map's
        pixels are warped separately); default unchanged. Normals turn with the image."""
        del angle
        return label

    @classmethod
    def renormalise_label(cls, label: tf.Tensor) -> tf.Tensor:
        """After a resize that can change magnitudes (MTL-PyTorch's FixedResize); default
        unchanged. Normals are re-normalised to unit length."""
        return label

    @classmethod
    def add_ignore_regions(cls, label: tf.Tensor) -> tf.Tensor:
        """MTL-PyTorch's AddIgnoreRegions for this task's label; default unchanged."""
        return label

    # ------------------------------------------------------------------ cross-task mapping
    @classmethod
    def mapping_prediction(cls, pred: tf.Tensor, noise=None, seed=None) -> tf.Tensor:
        """A prediction `[B,H,W,C]` (as the head outputs it) -> the mapping network's input
        for this task, `[B,H,W,channels]`. `noise`/`seed` serve tasks that sample
        (`mapping_needs_noise`)."""
        raise NotImplementedError(f"task kind {cls.__name__} has no cross-task mapping input")

    @classmethod
    def mapping_label(cls, label: tf.Tensor, channels: int, dtype=tf.float32) -> tf.Tensor:
        """A label batch (as in the data contract) -> the mapping network's input for this
        task, float `[B,H,W,channels]`, ignored pixels zero."""
        raise NotImplementedError(f"task kind {cls.__name__} has no cross-task mapping input")

    @classmethod
    def label_annotated(cls, label: tf.Tensor) -> tf.Tensor:
        """bool `[B]`: the label map has at least one valid pixel (e.g. False for a human-parts
        map of an image without people, all ignore). MTPSL skips targets without one."""
        raise NotImplementedError(f"task kind {cls.__name__} does not say which labels are annotated")

    # ------------------------------------------------------------------ baselines
    def ssl_consistency(self, pred: tf.Tensor, target: tf.Tensor, valid: tf.Tensor,
                        threshold: float) -> Tuple[tf.Tensor, tf.Tensor]:
        """The SSL baseline's term between two views (docs/BASELINES.md).

        Args:
            pred: this view's prediction `[B,H,W,C]` (gets the gradient).
            target: the other view's prediction aligned to this view, `[B,H,W,C]` (treated
                as a constant).
            valid: float `[B,H,W]`, 1 where `target` exists.
            threshold: confidence / agreement threshold of the kind.

        Returns:
            (numerator, count) float32 `[B]`: the per-image term is numerator / count, count =
            valid pixels (the authors' pieces average over all pixels, masked ones add 0).
        """
        raise NotImplementedError(f"task kind {type(self).__name__} has no SSL consistency term")

    @classmethod
    def perceptual_form(cls, output: tf.Tensor) -> tf.Tensor:
        """A head output `[B,H,W,C]` -> the form two outputs are compared in by an L1
        perceptual loss (Perceptual-Map, X-task); default: the output itself, float32."""
        return tf.cast(output, tf.float32)


def agreement_terms(distance: tf.Tensor, valid: tf.Tensor, threshold: float) -> Tuple[tf.Tensor, tf.Tensor]:
    """sum over pixels of `distance` where its (constant) value is below `threshold` and
    `valid`, and the valid count; `distance`, `valid` `[B,H,W]` -> two `[B]`."""
    valid = tf.cast(valid, tf.float32)
    agree = tf.cast(tf.stop_gradient(distance) < threshold, tf.float32) * valid
    return tf.reduce_sum(distance * agree, axis=[1, 2]), tf.reduce_sum(valid, axis=[1, 2])


def pseudo_label_terms(nll: tf.Tensor, confidence: tf.Tensor, valid: tf.Tensor,
                       threshold: float) -> Tuple[tf.Tensor, tf.Tensor]:
    """sum over pixels of `nll` (of the pseudo-label) where `confidence` > `threshold` and
    `valid`, and the valid count; all `[B,H,W]` -> two `[B]`."""
    valid = tf.cast(valid, tf.float32)
    confident = tf.cast(confidence > threshold, tf.float32) * valid
    return tf.reduce_sum(nll * confident, axis=[1, 2]), tf.reduce_sum(valid, axis=[1, 2])
