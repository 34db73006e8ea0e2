"""`mgda`: MGDA-UB (Sener & Koltun, "Multi-task learning as multi-objective optimization",
NeurIPS 2018).

Each step: normalise each task's gradient by its loss (g_t / L_t, the "loss" normaliser of
the reference), find the convex weights of the minimum-norm point of their hull
(`common.min_norm_weights`, Frank-Wolfe as MinNormSolver), and update the shared parameters
with sum_t w_t g_t, as VICO-UoE/UniversalRepresentations `DensePred/nyu_mtl_baseline.py`
(`--weight=mgda`, `mgda/min_norm_solvers.py`).

Deviations: (1) the reference differentiates with respect to the shared FEATURE (the
"upper bound" of MGDA-UB, one cheap gradient per task); the training step offers per-task
gradients of the shared PARAMETERS only, so this is MGDA on the shared parameters (the
exact MGDA of the paper, more backward work); (2) the reference also scales each task head's
gradient by w_t; here the heads follow the static-weighted sum of the task losses (as LibMTL's
gradient weightings, `LibMTL/weighting/MGDA.py`), since the weights exist only after the
per-task gradients.

Partial labels: only the tasks present in the global batch enter the solver (an absent
task has a zero gradient, the minimum-norm point of a hull containing 0 would be 0); absent
tasks get w_t = 0. Losses are clamped away from 0 before dividing.
"""

from __future__ import annotations

import tensorflow as tf

from mtpsl_tf.weighting.base import SHARED_PARAMETERS, WEIGHTINGS, LossWeighting
from mtpsl_tf.weighting.common import (EPS, global_sum, local_combination, min_norm_weights, present_vector,
                                       stacked_gradients, task_vector, uniform_weights)


@WEIGHTINGS.register("mgda")
class MGDA(LossWeighting):
    """Shared parameters: sum_t w_t g_t, w the min-norm weights of {g_t / L_t} (present t)."""

    gradient_source = SHARED_PARAMETERS

    def build(self):
        self.current = uniform_weights(len(self.task_names), "mgda_weights")


    def combine_gradients(self, task_gradients, losses, present):
        mask = present_vector(present, self.task_names)
        g = stacked_gradients(task_gradients, self.task_names)  # [T, P]
        loss = global_sum(task_vector(losses, self.task_names))
        normalised = g / tf.maximum(loss, EPS)[:, None]
        w = min_norm_weights(tf.matmul(normalised, normalised, transpose_b=True), mask)
        self.current.assign(w)
        return local_combination(tf.linalg.matvec(g, w, transpose_a=True), task_gradients[self.task_names[0]])

    def weights(self):
        return {n: self.current[i] for i, n in enumerate(self.task_names)}
