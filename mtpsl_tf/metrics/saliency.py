"""Saliency mIoU and max F-measure over a threshold sweep (reference: MTL-PyTorch SaliencyMeter).

Also holds `threshold_counts`, the histogram trick the edge metric shares: how many masked
values pass each threshold of a sweep, without materialising one binary map per threshold.
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from mtpsl_tf.metrics import _common

# MTL-PyTorch SaliencyMeter / eval_sal_predictions: np.linspace(0.2, 0.9, 15).
SALIENCY_THRESHOLDS = tuple(float(t) for t in np.linspace(0.2, 0.9, 15))
_EPS = 1e-12  # the reference's guard in precision, recall and F


def check_thresholds(metric: str, thresholds) -> tuple:
    """`thresholds` as a tuple of floats, strictly increasing and finite (ValueError otherwise)."""
    values = tuple(float(t) for t in np.asarray(thresholds, np.float64).reshape(-1))
    if not values or not np.all(np.isfinite(values)) or np.any(np.diff(values) <= 0):
        raise ValueError(
            f"{metric}: thresholds must be a non-empty, strictly increasing sequence of finite "
            f"numbers, got {thresholds!r}"
        )
    return values


def threshold_counts(
    values: tf.Tensor, mask: tf.Tensor, thresholds: Sequence[float], strict: bool
) -> tf.Tensor:
    """Per-image counts of masked values passing each threshold.

    Args:
        values: float `[B, ...]`.
        mask: bool, same shape; only True entries are counted.
        thresholds: K increasing floats.
        strict: count `value > t` if True, `value >= t` if False.

    Returns:
        int64 `[B, K]`: entry (b, k) = #{masked entries of image b passing thresholds[k]}.
        One searchsorted + one segment sum, whatever K is (shape-static, XLA-compatible).
    """
    k = len(thresholds)
    batch = tf.shape(values)[0]
    flat = tf.reshape(tf.cast(values, tf.float32), [batch, -1])
    flat_mask = tf.reshape(mask, [batch, -1])
    table = tf.tile(tf.constant([thresholds], tf.float32), [batch, 1])
    # passed[b, i] = how many thresholds entry i passes (they are sorted, so it passes the first ones).
    passed = tf.searchsorted(table, flat, side="left" if strict else "right", out_type=tf.int32)
    rows = tf.range(batch, dtype=tf.int32)[:, None] * (k + 1)
    dropped = batch * (k + 1)  # masked-out entries go to a last segment that is discarded
    segment = tf.where(flat_mask, rows + passed, dropped)
    hist = tf.math.unsorted_segment_sum(
        tf.ones_like(segment, dtype=tf.int64), segment, num_segments=dropped + 1
    )
    hist = tf.reshape(hist[:-1], [batch, k + 1])
    # Passing threshold j means passing at least j + 1 thresholds.
    return tf.cumsum(hist[:, 1:], axis=1, reverse=True)


@keras.saving.register_keras_serializable(package="mtpsl_tf")
class SaliencyMetrics(keras.metrics.Metric):
    """Streaming saliency metrics from probabilities, as MTL-PyTorch's SaliencyMeter.

    For every counted image and every threshold t of `thresholds` (default
    `np.linspace(0.2, 0.9, 15)`), the prediction is binarised as `prob > t` (strict) and, over the
    image's valid pixels (label >= 0; label >= 0.5 is salient):
    - Jaccard = |gt & pred| / |gt | pred|, and 1 when both are empty (evaluation/jaccard.py);
    - precision = tp / (tp + fp + 1e-12), recall = tp / (tp + fn + 1e-12).
    These are AVERAGED OVER IMAGES per threshold (float64 sums, int64 image count).

    `result()` returns float64 fractions:
    - `miou` = max over t of the image-averaged Jaccard (the reference's 'mIoU');
    - `maxF` = max over t of 2 P R / (P + R + 1e-12) with P, R the image-averaged precision and
      recall (beta^2 = 1, as the reference; not the 0.3 of much of the saliency literature).
    Both are NaN before any image has been counted.

    An image counts when it has at least one valid pixel and its sample weight (if given) is > 0;
    an all-ignored image (e.g. pure padding) is skipped rather than scored as a perfect empty mask.

    Args:
        thresholds: increasing binarisation thresholds on the probability.
        name: metric name.
        dtype: unused by the computation; kept for Keras' metric interface.
    """

    def __init__(
        self,
        thresholds: Optional[Sequence[float]] = None,
        name: str = "saliency_metrics",
        dtype=None,
    ):
        super().__init__(name=name, dtype=dtype)
        self.thresholds = check_thresholds(
            "SaliencyMetrics", SALIENCY_THRESHOLDS if thresholds is None else thresholds
        )
        k = len(self.thresholds)
        self.n_images = self._counter("n_images", (), "int64")
        self.sum_jaccard = self._counter("sum_jaccard", (k,), "float64")
        self.sum_precision = self._counter("sum_precision", (k,), "float64")
        self.sum_recall = self._counter("sum_recall", (k,), "float64")

    def _counter(self, name, shape, dtype):
        return _common.summed_counter(self, name, shape, dtype)

    def update_state(self, gt, prob, sample_weight=None):
        """Adds a batch.

        Args:
            gt: float `[B, H, W, 1]`: 1 salient, 0 not, -1 (any negative) = ignore.
            prob: float `[B, H, W, 1]` saliency probabilities (sigmoid of the head's logits).
            sample_weight: optional `[B]` per-image mask; images with weight <= 0 are skipped.
        """
        prob, valid, salient = _common.binary_maps(self.name, gt, prob, sample_weight)

        tp = threshold_counts(prob, salient, self.thresholds, strict=True)  # [B, K]
        predicted = threshold_counts(prob, valid, self.thresholds, strict=True)
        positives = tf.reduce_sum(tf.cast(salient, tf.int64), axis=[1, 2])[:, None]  # [B, 1]
        counted = tf.reduce_any(valid, axis=[1, 2])  # [B]

        tp, predicted, positives = (tf.cast(x, tf.float64) for x in (tp, predicted, positives))
        union = positives + predicted - tp
        jaccard = tf.where(union > 0, tp / tf.maximum(union, 1.0), tf.ones_like(tp))
        precision = tp / (predicted + _EPS)
        recall = tp / (positives + _EPS)

        def image_sum(x):
            return tf.reduce_sum(tf.where(counted[:, None], x, tf.zeros_like(x)), axis=0)

        self.n_images.assign_add(_common.count64(counted))
        self.sum_jaccard.assign_add(image_sum(jaccard))
        self.sum_precision.assign_add(image_sum(precision))
        self.sum_recall.assign_add(image_sum(recall))

    def per_threshold(self):
        """float64 `[K]` image-averaged (jaccard, precision, recall, F) per threshold."""
        n = tf.cast(tf.convert_to_tensor(self.n_images), tf.float64)
        jaccard = self.sum_jaccard / n
        precision = self.sum_precision / n
        recall = self.sum_recall / n
        f_measure = 2.0 * precision * recall / (precision + recall + _EPS)
        return jaccard, precision, recall, f_measure

    def result(self):
        """`{"miou", "maxF"}`: float64 fractions (see the class docstring)."""
        jaccard, _, _, f_measure = self.per_threshold()
        seen = tf.convert_to_tensor(self.n_images) > 0
        nan = tf.constant(np.nan, tf.float64)
        return {
            "miou": tf.where(seen, tf.reduce_max(jaccard), nan),
            "maxF": tf.where(seen, tf.reduce_max(f_measure), nan),
        }

    def get_config(self):
        config = super().get_config()
        config.update({"thresholds": list(self.thresholds)})
        return config
