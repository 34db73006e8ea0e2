"""Dataset-level confusion matrix: mIoU and pixel accuracy (reference: ConfMatrix)."""

from __future__ import annotations

import keras
import tensorflow as tf

from mtpsl_tf.metrics import _common


@keras.saving.register_keras_serializable(package="mtpsl_tf")
class ConfusionMatrix(keras.metrics.Metric):
    """Streaming `[C, C]` confusion matrix (rows = label, columns = prediction), int64 counts.

    Pixels count when `0 <= label < num_classes`; everything else (e.g. -1) is ignored.

    `result()` returns `{"miou": ..., "pixel_acc": ...}` as fractions in [0, 1] (float64):
    - IoU of class c = M[c, c] / (row_c + col_c - M[c, c]);
    - mIoU = mean IoU over the classes with a NON-ZERO union. Deviation from the reference:
      its `torch.mean` over all classes returns NaN as soon as one class is absent from both
      labels and predictions; we skip such classes instead (they have no defined IoU).
      When every class in the dataset is seen the two agree;
    - pixel accuracy = trace(M) / sum(M).
    Both are NaN before any valid pixel has been seen.

    Args:
        num_classes: C, the number of classes (>= 1).
        name: metric name.
        dtype: unused by the computation (accumulators are int64, results float64);
            kept for Keras' metric interface.
    """

    def __init__(self, num_classes: int, name: str = "confusion_matrix", dtype=None):
        super().__init__(name=name, dtype=dtype)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                f"ConfusionMatrix: num_classes must be an int >= 1, got {num_classes!r}"
            )
        self.num_classes = num_classes
        self.matrix = self.add_variable(
            shape=(num_classes, num_classes),
            initializer="zeros",
            dtype="int64",
            aggregation="sum",
            name="matrix",
        )

    def update_state(self, label, pred_label, sample_weight=None):
        """Adds a batch.

        Args:
            label: int `[B, H, W]`, class ids; pixels outside [0, C) are ignored.
            pred_label: int `[B, H, W]`, predicted class ids (e.g. argmax of the logits), each in
                [0, C) wherever the label is valid; an out-of-range prediction raises
                InvalidArgumentError (under XLA, where assertions are dropped, it is skipped).
            sample_weight: optional `[B]` per-image mask; images with weight <= 0 are skipped.
        """
        label = tf.convert_to_tensor(label)
        pred_label = tf.convert_to_tensor(pred_label)
        _common.check_pair(self.name, label, pred_label, channels=None)
        for role, value in (("label", label), ("pred_label", pred_label)):
            if not value.dtype.is_integer:
                raise TypeError(f"{self.name}: {role} must be an integer tensor, got {value.dtype}")
        n = self.num_classes
        label = tf.cast(label, tf.int32)
        pred_label = tf.cast(pred_label, tf.int32)
        valid = (label >= 0) & (label < n) & _common.image_mask(self.name, sample_weight, label)
        pred_ok = (pred_label >= 0) & (pred_label < n)
        check = tf.debugging.Assert(
            tf.reduce_all(pred_ok | ~valid),
            [f"{self.name}: pred_label must be in [0, {n}) at labelled pixels"],
        )
        with tf.control_dependencies([check]):
            counted = valid & pred_ok
        # Uncounted pixels go to an extra segment n*n that is dropped, so XLA stays shape-static.
        cell = tf.where(counted, label * n + pred_label, n * n)
        counts = tf.math.unsorted_segment_sum(
            tf.ones_like(cell, dtype=tf.int64), cell, num_segments=n * n + 1
        )
        self.matrix.assign_add(tf.reshape(counts[: n * n], (n, n)))

    def per_class_iou(self) -> tf.Tensor:
        """float64 `[C]`: IoU per class; NaN for a class absent from labels and predictions."""
        matrix = tf.cast(tf.convert_to_tensor(self.matrix), tf.float64)
        diag = tf.linalg.diag_part(matrix)
        union = tf.reduce_sum(matrix, axis=0) + tf.reduce_sum(matrix, axis=1) - diag
        return diag / union

    def result(self):
        """`{"miou", "pixel_acc"}`: float64 scalars, fractions (see the class docstring)."""
        iou = self.per_class_iou()
        present = ~tf.math.is_nan(iou)
        miou = _common.ratio(
            tf.reduce_sum(tf.where(present, iou, tf.zeros_like(iou))), _common.count64(present)
        )
        matrix = tf.convert_to_tensor(self.matrix)
        pixel_acc = _common.ratio(tf.linalg.trace(matrix), tf.reduce_sum(matrix))
        return {"miou": miou, "pixel_acc": pixel_acc}

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes})
        return config
