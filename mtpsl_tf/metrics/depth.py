"""Dataset-level depth errors (reference: DepthMeter and SegNet.depth_error)."""

from __future__ import annotations

import keras
import tensorflow as tf

from mtpsl_tf.metrics import _common

# DepthMeter clamps predictions to this floor before its errors ("only positive depths").
_MIN_DEPTH = 1e-9


@keras.saving.register_keras_serializable(package="mtpsl_tf")
class DepthMetrics(keras.metrics.Metric):
    """Streaming depth errors over the valid pixels (gt != 0) of every image seen.

    `result()` returns float64 scalars:
    - `abs_err` = sum |gt - max(pred, 1e-9)| / n_valid        (DepthMeter "l1")
    - `rmse`    = sqrt(sum (gt - max(pred, 1e-9))^2 / n_valid) (DepthMeter "rmse")
    - `rel_err` = sum |gt - pred| / gt / n_valid              (SegNet.depth_error, no clamp)
    Per-pixel errors are computed in float32 (as the reference) and summed in float64;
    the valid-pixel count is an int64. All are NaN before any valid pixel has been seen.

    Args:
        name: metric name.
        dtype: unused by the computation; kept for Keras' metric interface.
    """

    def __init__(self, name: str = "depth_metrics", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.n_valid = self._scalar("n_valid", "int64")
        self.sum_abs = self._scalar("sum_abs", "float64")
        self.sum_sq = self._scalar("sum_sq", "float64")
        self.sum_rel = self._scalar("sum_rel", "float64")

    def _scalar(self, name, dtype):
        return self.add_variable(
            shape=(), initializer="zeros", dtype=dtype, aggregation="sum", name=name
        )

    def update_state(self, gt, pred, sample_weight=None):
        """Adds a batch.

        Args:
            gt: float `[B, H, W, 1]` ground-truth depth, 0 = invalid.
            pred: float `[B, H, W, 1]` predicted depth.
            sample_weight: optional `[B]` per-image mask; images with weight <= 0 are skipped.
        """
        gt = tf.convert_to_tensor(gt)
        pred = tf.convert_to_tensor(pred)
        _common.check_pair(self.name, gt, pred, channels=1)
        gt = tf.cast(gt[..., 0], tf.float32)
        pred = tf.cast(pred[..., 0], tf.float32)
        valid = (gt != 0.0) & _common.image_mask(self.name, sample_weight, gt)
        clamped_err = tf.abs(gt - tf.maximum(pred, _MIN_DEPTH))
        # Invalid pixels have gt == 0; divide by 1 there so no inf/NaN reaches the masked sum.
        rel = tf.abs(gt - pred) / tf.where(valid, gt, tf.ones_like(gt))
        self.n_valid.assign_add(_common.count64(valid))
        self.sum_abs.assign_add(_common.sum64(clamped_err, valid))
        self.sum_sq.assign_add(_common.sum64(tf.square(clamped_err), valid))
        self.sum_rel.assign_add(_common.sum64(rel, valid))

    def result(self):
        """`{"abs_err", "rmse", "rel_err"}`: float64 scalars (see the class docstring)."""
        return {
            "abs_err": _common.ratio(self.sum_abs, self.n_valid),
            "rmse": tf.sqrt(_common.ratio(self.sum_sq, self.n_valid)),
            "rel_err": _common.ratio(self.sum_rel, self.n_valid),
        }
