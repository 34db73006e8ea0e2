"""Per-image losses of one mapping m_{s->t} (pure functions of tensors; `[B]` each)."""

from __future__ import annotations

import tensorflow as tf


def direct_loss(target_task, mapped: tf.Tensor, target_label) -> tf.Tensor:
    """`[B]`: target's own per-image loss of the mapped output m(s) against its label
    (Direct-Map, and the fitting of the mapping networks)."""
    return target_task.per_image_loss(mapped, target_label)


def perceptual_loss(target_task, mapped_prediction: tf.Tensor, mapped_label: tf.Tensor) -> tf.Tensor:
    """`[B]`: mean over pixels and channels of |f(m(prediction)) - f(m(label))|, f the target
    task's `perceptual_form` (probabilities for semantic / binary tasks, the output otherwise);
    the label's side is a constant (Zamir et al.'s perceptual loss, L1)."""
    a = target_task.perceptual_form(mapped_prediction)
    b = tf.stop_gradient(target_task.perceptual_form(mapped_label))
    return tf.reduce_mean(tf.abs(a - b), axis=[1, 2, 3])
