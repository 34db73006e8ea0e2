"""`dwa`: Dynamic Weight Average (Liu, Johns & Davison, "End-to-end multi-task learning with
attention", CVPR 2019, Eq. 7).

From the per-epoch mean losses L_t(e) of the two previous epochs:
    r_t = L_t(e-1) / L_t(e-2),   w_t(e) = K exp(r_t / T) / sum_k exp(r_k / T),
with temperature T (`--dwa_temperature`, 2 as lorenmt/mtan `model_segnet_mtan.py`'s `--temp`;
VICO-UoE/UniversalRepresentations `DensePred/nyu_mtl_baseline.py` applies the same formula)
and w = 1 for the first two epochs. total = sum_t w_t L_t. The weights are constant within
an epoch and recomputed by `end_epoch`; the two previous means and the weights are
checkpointed (`state()`), so resume is exact.

Partial labels: the epoch means come from the training trackers (each step's loss is the
sum over the images labelled for the task divided by the batch size), i.e. each task's mean
over the images labelled for it times the fraction of the epoch's images labelled for it;
that fraction is the same every epoch (the label masks are fixed; up to the images a
dropped partial batch leaves out), so it cancels in r_t.
A task with no labelled image in one of the two epochs (mean exactly 0) has no ratio: it
is left out of the softmax (K counts only the tasks with a ratio) and keeps weight 1, so no
weight is pulled towards it and nothing divides by 0.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from mtpsl_tf.options import option
from mtpsl_tf.weighting.base import WEIGHTINGS, LossWeighting
from mtpsl_tf.weighting.common import task_vector


@dataclasses.dataclass(frozen=True)
class Options:
    dwa_temperature: float = option(2.0, "dwa weighting: softmax temperature T of the loss ratios.")

    def validate(self):
        if not self.dwa_temperature > 0:
            raise ValueError(f"--dwa_temperature must be > 0, got {self.dwa_temperature}")


def dwa_weights(previous: np.ndarray, before: np.ndarray, temperature: float) -> np.ndarray:
    """w `[T]` from the mean losses of epochs e-1 (`previous`) and e-2 (`before`)."""
    known = (previous > 0) & (before > 0)
    weights = np.ones_like(previous, dtype=np.float64)
    if known.any():
        ratio = previous[known] / before[known]
        z = np.exp((ratio - ratio.max()) / temperature)  # shifted: same softmax, no overflow
        weights[known] = known.sum() * z / z.sum()
    return weights


@WEIGHTINGS.register("dwa")
class DynamicWeightAverage(LossWeighting):
    """sum_t w_t L_t with w from the previous two epochs' mean losses (state `[T]` each)."""

    Options = Options

    def build(self):
        count = len(self.task_names)
        self.current = tf.Variable(tf.ones([count]), trainable=False, name="dwa_weights")
        self.previous = tf.Variable(tf.zeros([count]), trainable=False, name="dwa_previous_means")
        self.before = tf.Variable(tf.zeros([count]), trainable=False, name="dwa_before_means")
        self.epochs = tf.Variable(0, dtype=tf.int64, trainable=False, name="dwa_epochs")

    def state(self):
        return {"weights": self.current, "previous": self.previous, "before": self.before, "epochs": self.epochs}

    def combine(self, losses, present):
        del present  # an absent task's loss is 0: it adds nothing whatever its weight
        loss = task_vector(losses, self.task_names)
        return tf.cast(tf.reduce_sum(self.current * loss), list(losses.values())[0].dtype)

    def weights(self):
        return {n: self.current[i] for i, n in enumerate(self.task_names)}

    def end_epoch(self, epoch, mean_losses):
        means = np.array([mean_losses.get(n, 0.0) for n in self.task_names], np.float32)
        means = np.where(np.isfinite(means), means, 0.0)  # a NaN epoch carries no signal
        self.before.assign(self.previous.numpy())
        self.previous.assign(means)
        self.epochs.assign_add(1)
        if int(self.epochs.numpy()) >= 2:
            self.current.assign(dwa_weights(self.previous.numpy(), self.before.numpy(),
                                            self.options.dwa_temperature).astype(np.float32))
