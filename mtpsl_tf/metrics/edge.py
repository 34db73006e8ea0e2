"""Edge detection: optimal-dataset-scale F-measure (odsF), an in-graph approximation of seism.

What the reference does (MTL-PyTorch `evaluation/eval_edge.py` driving the seism toolbox, whose
`eval_cont` calls Piotr Dollar's `edgesEvalImg` / BSDS `correspondPixels`):
- the edge probability map is binarised at each of 99 thresholds 0.01, 0.02, ..., 0.99
  (`prob >= t`), and the binary map is thinned (`bwmorph(.., 'thin', Inf)`);
- predicted and ground-truth boundary pixels are matched ONE-TO-ONE (minimum-cost bipartite
  matching) when closer than maxDist * image diagonal. MTL-PyTorch passes the database name
  'PASCALContext', for which seism's `eval_method.m` uses its default maxDist = 0.0075
  (0.01 is only used for 'Pascal', 0.02 for 'SBD');
- per threshold, cntP = matched predicted pixels, sumP = predicted pixels, cntR = matched
  ground-truth pixels, sumR = ground-truth pixels are SUMMED OVER THE DATASET, then
  P = cntP / sumP, R = cntR / sumR, F = 2PR / (P + R); odsF = max over thresholds of F.

What `EdgeMetrics` does instead (streaming, tf ops only, works under tf.function and XLA):
- no bipartite matching: a predicted pixel counts as matched if ANY ground-truth boundary pixel
  lies within the tolerance, and a ground-truth pixel counts as matched if ANY predicted pixel
  (prob >= t) lies within it. Both are computed with a disk-shaped dilation (radius
  r = max_dist * sqrt(H^2 + W^2) pixels, offsets with dy^2 + dx^2 <= r^2): a binary dilation of
  the ground truth for precision and a grey (max) dilation of the probability map for recall,
  so every threshold is handled by one histogram, not one matching per threshold;
- no thinning of the binarised predictions;
- the diagonal is that of the evaluated tensor (the network's resolution, padding included),
  while seism resizes predictions back to each original image first;
- probabilities are used as floats, not re-quantised through 8-bit PNGs.
Many-to-one matches make precision and recall optimistic for thick or duplicated edges, while
the missing thinning penalises thick edges in sumP; numbers are therefore CLOSE TO BUT NOT
IDENTICAL WITH the published (seism) ones. Treat them as a proxy for model selection and
comparisons within this code base; `ods_f` (boundary.py, re-exported here) is the protocol's
numpy implementation, used by `python -m mtpsl_tf.evaluate --protocol=paper`.

Special cases follow seism's `gather_measure`: with no ground-truth pixel in the dataset,
R = 1 and P = 0; with no predicted pixel at a threshold, R = 0 and P = 1; F = 0 when P + R = 0.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from mtpsl_tf.metrics import _common
from mtpsl_tf.metrics.boundary import DEFAULT_MAX_DIST, ods_f  # noqa: F401  (ods_f re-exported)
from mtpsl_tf.metrics.saliency import check_thresholds, threshold_counts

# seism parameters written by MTL-PyTorch's eval_edge_predictions: 0.01, 0.02, ..., 0.99.
EDGE_THRESHOLDS = tuple(round(0.01 * i, 2) for i in range(1, 100))
_NOTHING = -1.0  # below every probability and indicator: "no value here"


def disk_half_widths(radius: float):
    """`[(dy, w)]` for dy = 0..floor(r): the disk row at offset +-dy spans dx in [-w, w],
    w = the largest integer with dy^2 + w^2 <= r^2 (exact integer test)."""
    r2 = radius * radius
    rows, dy = [], 0
    while dy * dy <= r2:
        w = int(math.isqrt(int(math.floor(r2 - dy * dy))))
        rows.append((dy, w))
        dy += 1
    return rows


def _shift_rows(x: tf.Tensor, dy: int, height: int) -> tf.Tensor:
    """out[:, i] = x[:, i + dy] where that row exists, else _NOTHING (x: `[B, H, W, 1]`)."""
    if dy == 0:
        return x
    if abs(dy) >= height:
        return tf.fill(tf.shape(x), _NOTHING)
    pad = tf.fill(tf.shape(x[:, : abs(dy)]), _NOTHING)
    if dy > 0:
        return tf.concat([x[:, dy:], pad], axis=1)
    return tf.concat([pad, x[:, :dy]], axis=1)


def disk_max_static(x: tf.Tensor, radius: float) -> tf.Tensor:
    """Max of `x` (`[B, H, W]`, static H and W) over a disk of `radius` pixels around each pixel.

    The disk is split into rows: a horizontal max-pool of width 2w+1 per distinct half-width,
    shifted vertically by +-dy. Positions outside the image are ignored.
    """
    height, width = int(x.shape[1]), int(x.shape[2])
    x4 = x[..., None]
    out = x4
    for dy, w in disk_half_widths(radius):
        w = min(w, width - 1)
        row_max = x4 if w == 0 else tf.nn.max_pool2d(x4, (1, 2 * w + 1), 1, "SAME")
        for signed in {dy, -dy}:
            out = tf.maximum(out, _shift_rows(row_max, signed, height))
    return out[..., 0]


def disk_max_dynamic(x: tf.Tensor, radius: tf.Tensor) -> tf.Tensor:
    """As `disk_max_static` for a run-time radius (dynamic H, W): a grey dilation with a disk
    structuring element (tf.nn.dilation2d; not XLA-compilable)."""
    radius = tf.cast(radius, tf.float64)
    reach = tf.cast(tf.floor(radius), tf.int32)
    offsets = tf.range(-reach, reach + 1)
    dy, dx = tf.meshgrid(offsets, offsets, indexing="ij")
    inside = tf.cast(dy * dy + dx * dx, tf.float64) <= radius * radius
    kernel = tf.where(inside, 0.0, -1e9)[..., None]
    out = tf.nn.dilation2d(
        x[..., None], tf.cast(kernel, x.dtype), strides=[1, 1, 1, 1], padding="SAME",
        data_format="NHWC", dilations=[1, 1, 1, 1],
    )
    return out[..., 0]


@keras.saving.register_keras_serializable(package="mtpsl_tf")
class EdgeMetrics(keras.metrics.Metric):
    """Streaming odsF for edge probabilities; see the module docstring for the approximation.

    Per threshold t (default 0.01..0.99) int64 counters summed over every image seen:
    - sumP(t) = valid pixels with prob >= t;
    - cntP(t) = those with a ground-truth edge pixel within the tolerance disk;
    - cntR(t) = ground-truth edge pixels with a valid pixel of prob >= t within the disk;
    - sumR    = ground-truth edge pixels.
    Valid pixels have label >= 0 (label >= 0.5 is an edge, -1 = ignore: neither ground truth nor
    prediction, and never matched).

    `result()` returns `{"odsF": max_t 2 P(t) R(t) / (P(t) + R(t))}` (float64, a fraction), NaN
    before any valid pixel has been seen.

    Args:
        thresholds: increasing binarisation thresholds on the probability (`prob >= t`).
        max_dist: tolerance as a fraction of the image diagonal sqrt(H^2 + W^2).
        radius: tolerance in pixels; overrides `max_dist` when given. With None, the radius comes
            from the inputs' static H, W (XLA-friendly max-pools) or, when those are unknown,
            from their run-time shape (dilation2d, not XLA-compilable).
        name: metric name.
        dtype: unused by the computation; kept for Keras' metric interface.
    """

    def __init__(
        self,
        thresholds: Optional[Sequence[float]] = None,
        max_dist: float = DEFAULT_MAX_DIST,
        radius: Optional[float] = None,
        name: str = "edge_metrics",
        dtype=None,
    ):
        super().__init__(name=name, dtype=dtype)
        self.thresholds = check_thresholds(
            "EdgeMetrics", EDGE_THRESHOLDS if thresholds is None else thresholds
        )
        for arg, value in (("max_dist", max_dist), ("radius", radius)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or value < 0
            ):
                raise ValueError(f"EdgeMetrics: {arg} must be a finite number >= 0, got {value!r}")
        self.max_dist = float(max_dist)
        self.radius = None if radius is None else float(radius)
        k = len(self.thresholds)
        self.n_valid = self._counter("n_valid", (), "int64")
        self.sum_r = self._counter("sum_r", (), "int64")
        self.cnt_r = self._counter("cnt_r", (k,), "int64")
        self.sum_p = self._counter("sum_p", (k,), "int64")
        self.cnt_p = self._counter("cnt_p", (k,), "int64")

    def _counter(self, name, shape, dtype):
        return _common.summed_counter(self, name, shape, dtype)

    def _disk_max(self, x: tf.Tensor) -> tf.Tensor:
        height, width = x.shape[1], x.shape[2]
        if self.radius is not None and height is not None and width is not None:
            return disk_max_static(x, self.radius)
        if self.radius is None and height is not None and width is not None:
            return disk_max_static(x, self.max_dist * math.hypot(height, width))
        if self.radius is not None:
            return disk_max_dynamic(x, tf.constant(self.radius, tf.float64))
        shape = tf.cast(tf.shape(x)[1:3], tf.float64)
        return disk_max_dynamic(x, self.max_dist * tf.norm(shape))

    def update_state(self, gt, prob, sample_weight=None):
        """Adds a batch.

        Args:
            gt: float `[B, H, W, 1]`: 1 edge, 0 no edge, -1 (any negative) = ignore.
            prob: float `[B, H, W, 1]` edge probabilities (sigmoid of the head's logits).
            sample_weight: optional `[B]` per-image mask; images with weight <= 0 are skipped.
        """
        prob, valid, edge = _common.binary_maps(self.name, gt, prob, sample_weight)

        near_edge = self._disk_max(tf.cast(edge, tf.float32)) > 0.5
        best_nearby = self._disk_max(tf.where(valid, prob, _NOTHING))

        def counts(values, mask):
            return tf.reduce_sum(threshold_counts(values, mask, self.thresholds, strict=False), 0)

        self.n_valid.assign_add(_common.count64(valid))
        self.sum_r.assign_add(_common.count64(edge))
        self.cnt_r.assign_add(counts(best_nearby, edge))
        self.sum_p.assign_add(counts(prob, valid))
        self.cnt_p.assign_add(counts(prob, valid & near_edge))

    def precision_recall(self):
        """float64 `[K]` (precision, recall) per threshold, with seism's special cases."""
        cnt_p, sum_p, cnt_r = (tf.convert_to_tensor(v) for v in (self.cnt_p, self.sum_p, self.cnt_r))
        sum_r = tf.fill(tf.shape(cnt_r), tf.convert_to_tensor(self.sum_r))
        zeros = tf.zeros(tf.shape(cnt_r), tf.float64)
        ones = tf.ones_like(zeros)
        # The order of gather_measure.m: later cases overwrite earlier ones.
        no_gt = (sum_r == 0) & (cnt_p == 0)
        recall = tf.where(no_gt, ones, zeros)
        precision = zeros
        no_pred = (sum_p == 0) & (cnt_r == 0)
        recall = tf.where(no_pred, zeros, recall)
        precision = tf.where(no_pred, ones, precision)
        regular = (sum_p != 0) & (cnt_r != 0)
        recall = tf.where(regular, _common.ratio(cnt_r, tf.maximum(sum_r, 1)), recall)
        precision = tf.where(regular, _common.ratio(cnt_p, tf.maximum(sum_p, 1)), precision)
        return precision, recall

    def f_measure(self) -> tf.Tensor:
        """float64 `[K]`: F per threshold from the pooled counts (0 where P + R = 0)."""
        precision, recall = self.precision_recall()
        total = precision + recall
        return tf.where(total > 0, 2.0 * precision * recall / tf.where(total > 0, total, 1.0), 0.0)

    def result(self):
        """`{"odsF"}`: float64 fraction (see the class docstring)."""
        seen = tf.convert_to_tensor(self.n_valid) > 0
        return {"odsF": tf.where(seen, tf.reduce_max(self.f_measure()), tf.constant(np.nan, tf.float64))}

    def get_config(self):
        config = super().get_config()
        config.update({"thresholds": list(self.thresholds), "max_dist": self.max_dist,
                       "radius": self.radius})
        return config
