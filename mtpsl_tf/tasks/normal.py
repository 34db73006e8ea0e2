"""Surface normals: 3-channel head, L2-normalised; loss 1 - mean cosine over valid pixels."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mtpsl_tf.metrics import NormalMetrics
from mtpsl_tf.tasks.base import LOWER, HIGHER, Task
from mtpsl_tf.tasks.registry import TASKS


@TASKS.register("normal")
class Normal(Task):
    """Per-pixel unit normals.

    Labels: float32 `[B,H,W,3]` unit vectors, all-zero = invalid. Outputs: unit `[B,H,W,3]`.
    Loss of one image: 1 - sum(pred * gt over valid pixels) / number of valid pixels.
    """

    channels = 3
    activation = "l2_normalize"
    metric_directions = {
        "mean": LOWER, "median": LOWER, "rmse": LOWER,
        "within_11.25": HIGHER, "within_22.5": HIGHER, "within_30": HIGHER,
    }
    primary_metric = "mean"

    def __init__(self, name: str = "normal"):
        self.name = name

    def loss_terms(self, pred, label):
        valid = tf.cast(tf.reduce_sum(label, axis=-1, keepdims=True) != 0, tf.float32)
        dot = tf.reduce_sum(pred * label * valid, axis=[1, 2, 3])
        count = tf.reduce_sum(valid, axis=[1, 2, 3])
        # 1 - dot/count, written as (count - dot)/count so an empty image gives 0.
        return count - dot, count

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
