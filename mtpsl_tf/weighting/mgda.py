"""`mgda`: MGDA-UB (Sener & Koltun, "Multi-task learning as multi-objective optimization",
NeurIPS 2018).

Each step: each task's gradient g_t, normalised by n_t (`--mgda_normalisation`, default
`loss`: n_t = L_t, the reference's choice), gives the convex weights w of the minimum-norm
point of the hull of {g_t / n_t} (`common.min_norm_weights`, Frank-Wolfe as MinNormSolver,
computed from the Gram matrix G_ij = g_i . g_j / (n_i n_j)). `--mgda_on` says which gradient:

- `feature` (default, the reference VICO-UoE/UniversalRepresentations
  `DensePred/nyu_mtl_baseline.py`, `--weight=mgda`; LibMTL's `rep_grad` mode): g_t is the
  gradient of L_t with respect to the backbone's shared representation Z (the tensor every
  head reads, `Backbone.shared_output`: SegNet's decoder output, ResNet's layer4 output), one
  cheap gradient per task (MGDA-UB: the min-norm weights on Z bound those on the shared
  parameters before Z). The whole network then follows sum_t w_t L_t with w held constant,
  heads included, as the reference (`loss = sum(w[i].data * train_loss[i])`). When a method
  calls the network more than once per step (e.g. two views), Z is all of its calls' shared
  outputs and the Gram matrix sums over them. A backbone whose heads read task-specific
  features (MTAN) has no such Z: the training model refuses `--mgda_on=feature` there.
- `parameters`: g_t is the gradient of L_t with respect to the shared parameters (MGDA proper,
  one backward pass per task); the shared parameters get sum_t w_t g_t and the heads the
  static-weighted sum (as LibMTL's `param` mode), since the weights exist only after the
  per-task gradients.

`--mgda_normalisation` (the reference's `gradient_normalizers`): `loss` n_t = L_t (what the
reference's DensePred script does: `grad / train_loss[i]`), `loss+` n_t = L_t ||g_t||, `l2`
n_t = ||g_t||, `none` n_t = 1. The reference solves with `find_min_norm_element` (projected
gradient); Frank-Wolfe (250 iterations) reaches the same minimum-norm point.

Under a tf.distribute strategy the losses and the Gram matrix are all-reduced (a replica's
gradient of its images' share; the Gram matrix of the global batch is the sum of the
replicas' since different images are different coordinates of Z), so every replica decides
the same weights; under loss scaling every g_t carries the same factor, which the min-norm
weights ignore.

Partial labels: only the tasks present in the global batch enter the solver (an absent
task has a zero gradient, the minimum-norm point of a hull containing 0 would be 0); absent
tasks get w_t = 0. Losses and norms are clamped away from 0 before dividing.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from mtpsl_tf.options import option
from mtpsl_tf.weighting.base import SHARED_FEATURE, SHARED_PARAMETERS, WEIGHTINGS, LossWeighting
from mtpsl_tf.weighting.common import (EPS, global_sum, local_combination, min_norm_weights, present_vector,
                                       stacked_gradients, task_vector, uniform_weights)

GRADIENTS = {"feature": SHARED_FEATURE, "parameters": SHARED_PARAMETERS}
NORMALISATIONS = ("loss", "loss+", "l2", "none")


@dataclasses.dataclass(frozen=True)
class Options:
    mgda_on: str = option("feature", "mgda weighting: differentiate each task's loss with respect to the "
                                     "backbone's shared representation (feature, MGDA-UB, as the reference) "
                                     "or its shared parameters (parameters).")
    mgda_normalisation: str = option("loss", "mgda weighting: each task gradient is divided by loss (L_t, the "
                                             "reference's), loss+ (L_t ||g_t||), l2 (||g_t||) or none.")

    def validate(self):
        if self.mgda_on not in GRADIENTS:
            raise ValueError(f"--mgda_on must be one of {', '.join(GRADIENTS)}, got {self.mgda_on!r}")
        if self.mgda_normalisation not in NORMALISATIONS:
            raise ValueError(f"--mgda_normalisation must be one of {', '.join(NORMALISATIONS)}, "
                             f"got {self.mgda_normalisation!r}")


def normalised_gram(gram: tf.Tensor, loss: tf.Tensor, kind: str) -> tf.Tensor:
    """G_ij / (n_i n_j) `[T, T]` from the Gram matrix of the raw task gradients and the global
    losses `[T]`, n as `--mgda_normalisation=kind`."""
    norm = tf.sqrt(tf.maximum(tf.linalg.diag_part(gram), 0.0))
    n = {"loss": loss, "loss+": loss * norm, "l2": norm, "none": tf.ones_like(loss)}[kind]
    n = tf.maximum(n, EPS)
    return gram / (n[:, None] * n[None, :])


@WEIGHTINGS.register("mgda")
class MGDA(LossWeighting):
    """w: the min-norm weights of {g_t / n_t} (present t); g on the shared representation
    (total sum_t w_t L_t) or on the shared parameters (their gradient sum_t w_t g_t)."""

    Options = Options

    @property
    def gradient_source(self):
        return GRADIENTS[self.options.mgda_on]

    def build(self):
        self.current = uniform_weights(len(self.task_names), "mgda_weights")

    def _solve(self, gram, losses, present) -> tf.Tensor:
        """Assigns and returns the weights `[T]` from the GLOBAL Gram matrix `[T, T]`."""
        mask = present_vector(present, self.task_names)
        loss = global_sum(task_vector(losses, self.task_names))
        w = min_norm_weights(normalised_gram(gram, loss, self.options.mgda_normalisation), mask)
        self.current.assign(w)
        return w

    def observe_feature_gradients(self, feature_gradients, losses, present):
        rows = tf.stack([tf.concat([tf.reshape(tf.cast(g, tf.float32), [-1]) for g in feature_gradients[n]], 0)
                         for n in self.task_names])  # [T, this replica's elements of Z]
        self._solve(global_sum(tf.matmul(rows, rows, transpose_b=True)), losses, present)

    def combine(self, losses, present):
        if self.gradient_source == SHARED_PARAMETERS:
            return super().combine(losses, present)
        w = tf.stop_gradient(tf.cast(self.current, tf.float32))
        loss = task_vector(losses, self.task_names)
        return tf.cast(tf.reduce_sum(w * loss), list(losses.values())[0].dtype)

    def combine_gradients(self, task_gradients, losses, present):
        g = stacked_gradients(task_gradients, self.task_names)  # [T, P], global
        w = self._solve(tf.matmul(g, g, transpose_b=True), losses, present)
        return local_combination(tf.linalg.matvec(g, w, transpose_a=True), task_gradients[self.task_names[0]])

    def weights(self):
        return {n: self.current[i] for i, n in enumerate(self.task_names)}
