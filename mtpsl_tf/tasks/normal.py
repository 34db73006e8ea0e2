"""Surface normals: 3-channel head, L2-normalised; loss 1 - mean cosine (default) or the
MTL-PyTorch L1 loss over valid pixels."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from mtpsl_tf.metrics import NormalMetrics
from mtpsl_tf.tasks.base import HIGHER, LOWER, SMOOTH, Task, agreement_terms
from mtpsl_tf.tasks.registry import TASKS


def rotate_in_plane(normals, angle) -> tf.Tensor:
    """MTL-PyTorch ScaleNRotate's in-plane turn of normals [..., 3] by `angle` degrees (their
    formula: a = atan2(n0, n1), r = |(n0, n1)|, n0 <- r sin(a + angle), n1 <- r cos(a + angle))."""
    normals = tf.convert_to_tensor(normals)
    radians = tf.cast(tf.cast(angle, tf.float64) * (2.0 * math.pi / 360.0), normals.dtype)
    n0, n1 = normals[..., 0], normals[..., 1]
    in_plane = tf.atan2(n0, n1) + radians
    norm = tf.sqrt(n0 * n0 + n1 * n1)
    return tf.stack([tf.sin(in_plane) * norm, tf.cos(in_plane) * norm, normals[..., 2]], axis=-1)


@TASKS.register("normal")
@TASKS.register("normals")  # PASCAL-Context's name
class Normal(Task):
    """Per-pixel unit normals.

    Labels: float32 `[B,H,W,3]` unit vectors, all-zero = invalid. Outputs: unit `[B,H,W,3]`.
    Loss of one image, by `loss`:
    - "cosine" (default, MTPSL): 1 - sum(pred * gt over valid pixels) / number of valid pixels,
      valid = components summing to non-zero (the reference's test);
    - "l1" (MTL-PyTorch NormalsLoss(normalize=True, size_average=True, norm=1)): the prediction
      is re-normalised, p / (||p|| + 1e-12), and sum |p - gt| over the valid pixels' components is
      divided by the number of valid ELEMENTS (3 per valid pixel, as their mask is per element),
      valid = any non-zero component.
    """

    channels = 3
    activation = "l2_normalize"
    metric_directions = {
        "mean": LOWER, "median": LOWER, "rmse": LOWER,
        "within_11.25": HIGHER, "within_22.5": HIGHER, "within_30": HIGHER,
    }
    primary_metric = "mean"
    label_resampling = SMOOTH

    LOSSES = ("cosine", "l1")

    def __init__(self, name: str = "normal", loss: str = "cosine"):
        if loss not in self.LOSSES:
            raise ValueError(f"task {name!r}: loss must be one of {self.LOSSES}, got {loss!r}")
        self.name = name
        self.loss = loss

    def loss_terms(self, pred, label):
        if self.loss == "l1":
            return self._l1_terms(pred, label)
        valid = tf.cast(tf.reduce_sum(label, axis=-1, keepdims=True) != 0, tf.float32)
        dot = tf.reduce_sum(pred * label * valid, axis=[1, 2, 3])
        count = tf.reduce_sum(valid, axis=[1, 2, 3])
        # 1 - dot/count, written as (count - dot)/count so an empty image gives 0.
        return count - dot, count

    @staticmethod
    def _l1_terms(pred, label):
        pred = tf.cast(pred, tf.float32)
        label = tf.cast(label, tf.float32)
        squared = tf.reduce_sum(tf.square(pred), axis=-1, keepdims=True)
        # ||p||, with a finite gradient at p = 0 (where tf.norm's would be NaN).
        norm = tf.where(squared > 0, tf.sqrt(tf.where(squared > 0, squared, 1.0)), 0.0)
        unit = pred / (norm + 1e-12)
        valid = tf.cast(tf.reduce_any(label != 0, axis=-1, keepdims=True), tf.float32)
        total = tf.reduce_sum(tf.abs(unit - label) * valid, axis=[1, 2, 3])
        return total, 3.0 * tf.reduce_sum(valid, axis=[1, 2, 3])

    def paper_scorer(self, workers: int = 1):
        """MTL-PyTorch's eval_normals on the saved 8-bit PNG (metrics/original_size.py)."""
        from mtpsl_tf.metrics.original_size import NormalScorer

        return NormalScorer()

    def ssl_consistency(self, pred, target, valid, threshold):
        """1 - cos(target, pred) per pixel where it is below threshold (the authors'
        `normal_con` thresholds 1 - target_c * pred_c per COMPONENT; we use the pixel's cosine
        distance, the quantity the normal loss trains: docs/BASELINES.md)."""
        target = tf.stop_gradient(tf.cast(target, tf.float32))
        distance = 1.0 - tf.reduce_sum(target * tf.cast(pred, tf.float32), axis=-1)
        return agreement_terms(distance, valid, threshold)

    def make_metric(self):
        return NormalMetrics(name=f"{self.name}_metrics")

    def update_metric(self, metric, label, pred):
        metric.update_state(label, pred)

    def label_signature(self, height, width):
        return tf.TensorSpec([height, width, 3], tf.float32)

    def check_label(self, label, where):
        if label.ndim != 3 or label.shape[-1] != 3:
            raise ValueError(f"{where}: normal label must be [H, W, 3], got shape {label.shape}")
        if not np.isfinite(label).all() or np.abs(label).max(initial=0) > 1.0 + 1e-3:
            raise ValueError(f"{where}: normal label components must be finite and in [-1, 1]")

    def visualise(self, value):
        return tf.clip_by_value((value + 1.0) / 2.0, 0.0, 1.0)

    @classmethod
    def mirror_label_values(cls, label):
        # A mirrored scene has mirrored normals: the x component (the image's horizontal
        # axis, channel 0) changes sign.
        return tf.concat([-label[..., :1], label[..., 1:]], axis=-1)

    @classmethod
    def rotate_label_values(cls, label, angle):
        return rotate_in_plane(label, angle)

    @classmethod
    def renormalise_label(cls, label):
        """n / (|n| + float32 eps), MTL-PyTorch's FixedResize of normals."""
        eps = float(np.finfo(np.float32).eps)
        norm = tf.sqrt(tf.reduce_sum(tf.square(label), axis=-1, keepdims=True))
        return label / (norm + tf.cast(eps, label.dtype))

    @classmethod
    def mapping_prediction(cls, pred, noise=None, seed=None):
        """(n + 1) / 2."""
        return (tf.convert_to_tensor(pred) + 1.0) / 2.0

    @classmethod
    def mapping_label(cls, label, channels, dtype=tf.float32):
        return (tf.cast(label, dtype) + 1.0) / 2.0

    @classmethod
    def label_annotated(cls, label):
        """Any valid (not all-zero) normal."""
        return tf.reduce_any(tf.not_equal(label, 0), axis=[1, 2, 3])
