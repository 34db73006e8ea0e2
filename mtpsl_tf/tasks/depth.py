"""Depth (or Cityscapes disparity): linear 1-channel head, L1 over valid pixels (0 = invalid)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mtpsl_tf.metrics import DepthMetrics
from mtpsl_tf.tasks.base import LOWER, Task, agreement_terms
from mtpsl_tf.tasks.registry import TASKS


# Added to the per-image maximum before dividing, as the reference does.
_DEPTH_EPS = 1e-12


def normalise_by_image_max(x) -> tf.Tensor:
    """`x / (max over each image + 1e-12)` for `[B, H, W, C]` (per image, as the reference's
    single-item `pred.max()`)."""
    peak = tf.reduce_max(x, axis=[1, 2, 3], keepdims=True)
    return x / (peak + _DEPTH_EPS)


def _colour_ramp(x):
    """[..] in [0,1] -> [..,3]: a simple perceptual-ish ramp (dark blue -> yellow)."""
    stops = tf.constant([[0.05, 0.03, 0.33], [0.23, 0.32, 0.55], [0.13, 0.57, 0.55], [0.36, 0.78, 0.38], [0.99, 0.91, 0.14]])
    pos = tf.clip_by_value(x, 0.0, 1.0) * 4.0
    lo = tf.cast(tf.floor(tf.minimum(pos, 3.999)), tf.int32)
    frac = (pos - tf.cast(lo, tf.float32))[..., None]
    return tf.gather(stops, lo) * (1.0 - frac) + tf.gather(stops, lo + 1) * frac


@TASKS.register("depth")
class Depth(Task):
    """Per-pixel depth regression.

    Labels: float32 `[B,H,W,1]`, 0 = invalid. Outputs: `[B,H,W,1]`, no activation.
    Loss of one image: sum |pred - gt| over valid pixels / number of valid pixels.
    """

    channels = 1
    activation = "linear"
    metric_directions = {"abs_err": LOWER, "rel_err": LOWER, "rmse": LOWER}
    primary_metric = "abs_err"

    def __init__(self, name: str = "depth"):
        self.name = name

    def loss_terms(self, pred, label):
        valid = tf.cast(tf.reduce_sum(label, axis=-1, keepdims=True) != 0, tf.float32)
        total = tf.reduce_sum(tf.abs(pred - label) * valid, axis=[1, 2, 3])
        return total, tf.reduce_sum(valid, axis=[1, 2, 3])

    def ssl_consistency(self, pred, target, valid, threshold):
        """|target - pred| where it is below threshold (the authors' `depth_con`)."""
        distance = tf.abs(tf.stop_gradient(tf.cast(target, tf.float32)) - tf.cast(pred, tf.float32))[..., 0]
        return agreement_terms(distance, valid, threshold)

    def make_metric(self):
        return DepthMetrics(name=f"{self.name}_metrics")

    def update_metric(self, metric, label, pred):
        metric.update_state(label, pred)

    def label_signature(self, height, width):
        return tf.TensorSpec([height, width, 1], tf.float32)

    def check_label(self, label, where):
        if label.ndim != 3 or label.shape[-1] != 1:
            raise ValueError(f"{where}: depth label must be [H, W, 1], got shape {label.shape}")
        if not np.isfinite(label).all() or (label < 0).any():
            raise ValueError(f"{where}: depth label must be finite and >= 0 (0 = invalid)")

    def visualise(self, value):
        value = value[..., 0]
        top = tf.reduce_max(value, axis=[1, 2], keepdims=True)
        return _colour_ramp(tf.math.divide_no_nan(value, top))

    @classmethod
    def zoom_label(cls, label, scale):
        # A zoom by `scale` brings the scene `scale` times closer.
        return label / tf.cast(scale, label.dtype)

    @classmethod
    def mapping_prediction(cls, pred, noise=None, seed=None):
        """Per-image max-normalised depth."""
        return normalise_by_image_max(tf.convert_to_tensor(pred))

    @classmethod
    def mapping_label(cls, label, channels, dtype=tf.float32):
        return normalise_by_image_max(tf.cast(label, dtype))

    @classmethod
    def label_annotated(cls, label):
        """Any valid (non-zero) depth."""
        return tf.reduce_any(tf.not_equal(label, 0), axis=[1, 2, 3])
