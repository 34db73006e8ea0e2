"""Input checks and small tensor helpers shared by the streaming metrics."""

from __future__ import annotations

from typing import Optional

import tensorflow as tf


def check_pair(metric: str, gt: tf.Tensor, pred: tf.Tensor, channels: Optional[int]) -> None:
    """Raises ValueError unless `gt` and `pred` have compatible static shapes.

    Args:
        metric: the metric's name, for the message.
        gt, pred: `[B, H, W, channels]` tensors, or `[B, H, W]` when `channels` is None.
        channels: expected size of the last axis, or None for rank-3 inputs.
    """
    rank = 3 if channels is None else 4
    expected = "[B, H, W]" if channels is None else f"[B, H, W, {channels}]"
    for role, value in (("ground truth", gt), ("prediction", pred)):
        if value.shape.rank is not None and value.shape.rank != rank:
            raise ValueError(f"{metric}: {role} must be {expected}, got shape {value.shape}")
        if channels is not None and value.shape.rank == 4:
            last = value.shape[-1]
            if last is not None and last != channels:
                raise ValueError(f"{metric}: {role} must be {expected}, got shape {value.shape}")
    if not gt.shape.is_compatible_with(pred.shape):
        raise ValueError(
            f"{metric}: ground truth shape {gt.shape} and prediction shape {pred.shape} differ"
        )


def image_mask(metric: str, sample_weight, like: tf.Tensor) -> tf.Tensor:
    """Per-image inclusion mask broadcastable to `like` (`[B, H, W]`): bool `[B, 1, 1]`.

    Args:
        metric: the metric's name, for the message.
        sample_weight: None (every image counts) or `[B]`; images with weight <= 0 are skipped
            (e.g. the batch's `label_mask` for the task). Weights are a mask, not a scale.
        like: the `[B, H, W]` tensor the mask will be combined with.
    """
    if sample_weight is None:
        return tf.ones_like(like, dtype=tf.bool)[:, :1, :1]
    weight = tf.convert_to_tensor(sample_weight)
    if weight.shape.rank is not None and weight.shape.rank != 1:
        raise ValueError(
            f"{metric}: sample_weight must be a per-image vector [B], got shape {weight.shape}"
        )
    return tf.reshape(tf.cast(weight, tf.float32) > 0.0, [-1, 1, 1])


def sum64(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Sum of `values` where `mask`, in float64 (exact enough over a whole dataset)."""
    return tf.reduce_sum(tf.where(mask, tf.cast(values, tf.float64), tf.zeros([], tf.float64)))


def count64(mask: tf.Tensor) -> tf.Tensor:
    """Number of True entries of `mask` as an int64 scalar."""
    return tf.reduce_sum(tf.cast(mask, tf.int64))


def ratio(numerator: tf.Tensor, denominator: tf.Tensor) -> tf.Tensor:
    """`numerator / denominator` in float64; NaN when the denominator is 0 (nothing seen yet)."""
    return tf.cast(numerator, tf.float64) / tf.cast(denominator, tf.float64)


def summed_counter(metric, name: str, shape, dtype):
    """A zero-initialised state variable of `metric`, summed across replicas."""
    return metric.add_variable(shape=shape, initializer="zeros", dtype=dtype, aggregation="sum", name=name)


def binary_maps(metric: str, gt, prob, sample_weight):
    """Checked `[B,H,W,1]` binary labels and probabilities -> `(prob, valid, positive)` `[B,H,W]`:
    valid = label >= 0 in a counted image, positive = valid and label >= 0.5."""
    gt = tf.convert_to_tensor(gt)
    prob = tf.convert_to_tensor(prob)
    check_pair(metric, gt, prob, channels=1)
    gt = tf.cast(gt[..., 0], tf.float32)
    valid = (gt >= 0.0) & image_mask(metric, sample_weight, gt)
    return tf.cast(prob[..., 0], tf.float32), valid, valid & (gt >= 0.5)
