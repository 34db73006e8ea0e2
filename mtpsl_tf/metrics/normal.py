"""Dataset-level surface-normal angle errors (reference: NormalsMeter, SegNet.normal_error)."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from mtpsl_tf.metrics import _common

_THRESHOLDS = (11.25, 22.5, 30.0)  # degrees; keys "within_11.25", "within_22.5", "within_30"
_MAX_ANGLE = 180.0


def _threshold_key(threshold: float) -> str:
    return f"within_{threshold:g}"


@keras.saving.register_keras_serializable(package="mtpsl_tf")
class NormalMetrics(keras.metrics.Metric):
    """Streaming angle errors (degrees) between predicted and ground-truth normals.

    A pixel is valid when its ground truth summed over channels is non-zero (the reference's
    test, so a unit vector whose components happen to sum to 0 is skipped too). Per valid pixel:
    angle = degrees(acos(clip(<pred, gt>, -1, 1))), computed in float32 as the reference.

    `result()` returns float64 scalars:
    - `mean`, `rmse` (sqrt of the mean squared angle), in degrees (sums kept in float64);
    - `median` in degrees, from a streaming histogram of the angles with `median_bin_degrees`
      wide bins over [0, 180] (default 0.005 deg, 36000 int64 bins), values assumed uniform
      within a bin: it differs from the exact `np.median` by less than one bin width;
    - `within_11.25`, `within_22.5`, `within_30`: PERCENT of valid pixels with angle strictly
      below the threshold (as NormalsMeter; SegNet.normal_error reports fractions).
    All are NaN before any valid pixel has been seen.

    Args:
        name: metric name.
        median_bin_degrees: histogram bin width for the median, in (0, 180].
        dtype: unused by the computation; kept for Keras' metric interface.
    """

    def __init__(
        self, name: str = "normal_metrics", median_bin_degrees: float = 0.005, dtype=None
    ):
        super().__init__(name=name, dtype=dtype)
        if not isinstance(median_bin_degrees, (int, float)) or not (
            0.0 < median_bin_degrees <= _MAX_ANGLE
        ):
            raise ValueError(
                f"NormalMetrics: median_bin_degrees must be in (0, 180], got {median_bin_degrees!r}"
            )
        self.median_bin_degrees = float(median_bin_degrees)
        self._num_bins = int(math.ceil(_MAX_ANGLE / self.median_bin_degrees - 1e-9))
        self.n_valid = self._counter("n_valid", (), "int64")
        self.sum_angle = self._counter("sum_angle", (), "float64")
        self.sum_sq = self._counter("sum_sq", (), "float64")
        self.n_within = self._counter("n_within", (len(_THRESHOLDS),), "int64")
        self.histogram = self._counter("histogram", (self._num_bins,), "int64")

    def _counter(self, name, shape, dtype):
        return _common.summed_counter(self, name, shape, dtype)

    def update_state(self, gt, pred, sample_weight=None):
        """Adds a batch.

        Args:
            gt: float `[B, H, W, 3]` ground-truth unit normals, all-zero = invalid.
            pred: float `[B, H, W, 3]` predicted unit normals.
            sample_weight: optional `[B]` per-image mask; images with weight <= 0 are skipped.
        """
        gt = tf.convert_to_tensor(gt)
        pred = tf.convert_to_tensor(pred)
        _common.check_pair(self.name, gt, pred, channels=3)
        gt = tf.cast(gt, tf.float32)
        pred = tf.cast(pred, tf.float32)
        valid = (tf.reduce_sum(gt, axis=-1) != 0.0) & _common.image_mask(
            self.name, sample_weight, gt[..., 0]
        )
        cosine = tf.clip_by_value(tf.reduce_sum(pred * gt, axis=-1), -1.0, 1.0)
        angle = (180.0 / math.pi) * tf.acos(cosine)
        self.n_valid.assign_add(_common.count64(valid))
        self.sum_angle.assign_add(_common.sum64(angle, valid))
        self.sum_sq.assign_add(_common.sum64(tf.square(angle), valid))
        self.n_within.assign_add(
            tf.stack([_common.count64(valid & (angle < t)) for t in _THRESHOLDS])
        )
        self.histogram.assign_add(self._histogram(angle, valid))

    def _histogram(self, angle, valid):
        """int64 `[num_bins]` counts of the valid angles; invalid pixels go to a dropped bin."""
        bins = tf.clip_by_value(
            tf.cast(tf.floor(angle / self.median_bin_degrees), tf.int32), 0, self._num_bins - 1
        )
        bins = tf.where(valid, bins, self._num_bins)
        counts = tf.math.unsorted_segment_sum(
            tf.ones_like(bins, dtype=tf.int64), bins, self._num_bins + 1
        )
        return counts[: self._num_bins]

    def _value_at_rank(self, cumulative, histogram, rank):
        """Interpolated angle of the `rank`-th (0-based, int64) smallest valid angle."""
        index = tf.minimum(
            tf.reduce_sum(tf.cast(cumulative <= rank, tf.int32)), self._num_bins - 1
        )
        in_bin = tf.gather(histogram, index)
        below = tf.gather(cumulative, index) - in_bin
        # The k-th of m values spread uniformly over a bin sits at (k + 0.5) / m of its width.
        fraction = (tf.cast(rank - below, tf.float64) + 0.5) / tf.cast(in_bin, tf.float64)
        return (tf.cast(index, tf.float64) + fraction) * self.median_bin_degrees

    def median(self) -> tf.Tensor:
        """float64 scalar: streaming median angle in degrees (NaN if nothing seen)."""
        histogram = tf.convert_to_tensor(self.histogram)
        cumulative = tf.cumsum(histogram)
        n = tf.convert_to_tensor(self.n_valid)
        # np.median: the middle value, or the mean of the two middle values when n is even.
        low = self._value_at_rank(cumulative, histogram, (n - 1) // 2)
        high = self._value_at_rank(cumulative, histogram, n // 2)
        return tf.where(n > 0, (low + high) / 2.0, tf.constant(math.nan, tf.float64))

    def result(self):
        """`{"mean", "median", "rmse", "within_11.25", "within_22.5", "within_30"}` (float64)."""
        n_within = tf.convert_to_tensor(self.n_within)
        out = {
            "mean": _common.ratio(self.sum_angle, self.n_valid),
            "median": self.median(),
            "rmse": tf.sqrt(_common.ratio(self.sum_sq, self.n_valid)),
        }
        for i, threshold in enumerate(_THRESHOLDS):
            out[_threshold_key(threshold)] = 100.0 * _common.ratio(n_within[i], self.n_valid)
        return out

    def get_config(self):
        config = super().get_config()
        config.update({"median_bin_degrees": self.median_bin_degrees})
        return config
