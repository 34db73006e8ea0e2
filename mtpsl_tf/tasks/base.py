"""What every task module provides: head spec, masked per-image loss, metrics, directions."""

from __future__ import annotations

import abc
from typing import Dict, Mapping, Tuple

import numpy as np
import tensorflow as tf

HIGHER, LOWER = "higher", "lower"


def safe_ratio(total: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
    """total / count, and 0 where count == 0 (an image with no valid pixel adds no loss;
    the reference would produce NaN there and poison the step)."""
    return tf.math.divide_no_nan(total, count)


class Task(abc.ABC):
    """A dense prediction task.

    Attributes:
        name: key of this task in model outputs, labels and label masks.
        channels: head output channels.
        activation: head activation name (see models.heads.ACTIVATIONS).
        metric_directions: metric name -> "higher" / "lower" is better.
        primary_metric: the metric Delta-MTL and model selection use.
    """

    name: str
    channels: int
    activation: str
    metric_directions: Mapping[str, str]
    primary_metric: str

    @property
    def head_spec(self) -> Dict[str, object]:
        return {"channels": self.channels, "activation": self.activation}

    @abc.abstractmethod
    def loss_terms(self, pred: tf.Tensor, label: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """Per-image loss numerator and valid-pixel count, both `[B]` float32."""

    def per_image_loss(self, pred: tf.Tensor, label: tf.Tensor) -> tf.Tensor:
        """`[B]`: the reference loss of each image on its own (SPEC section 3)."""
        total, count = self.loss_terms(pred, label)
        return safe_ratio(total, count)

    @abc.abstractmethod
    def make_metric(self):
        """A fresh streaming keras Metric whose `result()` is a dict keyed by metric name."""

    @abc.abstractmethod
    def update_metric(self, metric, label: tf.Tensor, pred: tf.Tensor) -> None:
        """Feeds one batch of labels and model outputs into `metric`."""

    @abc.abstractmethod
    def label_signature(self, height: int | None, width: int | None) -> tf.TensorSpec:
        """The label's TensorSpec for one example."""

    @abc.abstractmethod
    def check_label(self, label: np.ndarray, where: str) -> None:
        """Raises ValueError naming `where` if a numpy label is malformed."""

    @abc.abstractmethod
    def visualise(self, value: tf.Tensor) -> tf.Tensor:
        """Prediction or label `[B,H,W,C]` -> displayable `[B,H,W,3]` float in [0,1]."""
