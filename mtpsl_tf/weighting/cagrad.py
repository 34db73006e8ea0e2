"""`cagrad`: conflict-averse gradient descent (Liu, Liu, Jin, Stone & Liu, "Conflict-averse
gradient descent for multi-task learning", NeurIPS 2021).

With the task gradients g_t (of the static-weighted losses), g0 = mean_t g_t and
c = alpha ||g0||, find the simplex weights
    w = argmin_w  w^T G g0 + c sqrt(w^T G G^T w)      (G: the gradients as rows),
then update the shared parameters with (g0 + c / ||G^T w|| G^T w) / (1 + alpha^2), as LibMTL
`LibMTL/weighting/CAGrad.py` (from the authors' code; `calpha` 0.5 = `--cagrad_alpha`,
`rescale=1`). The inner problem is convex; LibMTL solves it with scipy's SLSQP, here projected
gradient descent on the simplex (fixed iteration count, traceable; `cagrad_weights`). The
heads follow the static-weighted sum of the task losses.

Partial labels: the average g0, the Gram matrix and the simplex are over the tasks present in
the global batch only (an absent task's zero gradient would shrink g0 and attract w).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from mtpsl_tf.options import option
from mtpsl_tf.weighting.base import SHARED_PARAMETERS, WEIGHTINGS, LossWeighting
from mtpsl_tf.weighting.common import EPS, local_combination, present_vector, stacked_gradients, uniform_weights

ITERATIONS = 3000  # measured: weights within 1e-4 of scipy SLSQP on the tests' problems


@dataclasses.dataclass(frozen=True)
class Options:
    cagrad_alpha: float = option(0.5, "cagrad weighting: the radius c = alpha ||g0|| of the conflict-averse ball.")

    def validate(self):
        if not self.cagrad_alpha >= 0:
            raise ValueError(f"--cagrad_alpha must be >= 0, got {self.cagrad_alpha}")


def project_to_simplex(v: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """The Euclidean projection of `v` `[T]` onto the simplex of the coordinates with `mask`
    1 (the others get 0); Duchi et al. 2008's sort-based rule."""
    v = tf.where(mask > 0, v, -1e6 * tf.ones_like(v))
    u = tf.sort(v, direction="DESCENDING")
    cssv = tf.cumsum(u) - 1.0
    index = tf.range(1, tf.shape(v)[0] + 1, dtype=v.dtype)
    rho = tf.reduce_sum(tf.cast(u - cssv / index > 0, tf.int32))
    theta = cssv[rho - 1] / tf.cast(rho, v.dtype)
    return mask * tf.maximum(v - theta, 0.0)


@tf.function  # eager callers (tests) would otherwise run the loop in Python
def cagrad_weights(gram: tf.Tensor, mask: tf.Tensor, alpha: float) -> tf.Tensor:
    """argmin over the masked simplex of w^T A b + c sqrt(w^T A w) with A = `gram` `[T, T]`,
    b = the uniform weights over the present tasks, c = alpha sqrt(b^T A b)."""
    count = tf.maximum(tf.reduce_sum(mask), 1.0)
    b = mask / count
    # The objective is homogeneous of degree 1 in A: scaling A leaves the argmin unchanged,
    # so normalise it for a step size that suits every gradient scale.
    a = gram / (tf.reduce_max(tf.abs(gram)) + EPS)
    c = alpha * tf.sqrt(tf.tensordot(b, tf.linalg.matvec(a, b), 1) + 1e-8)
    ab = tf.linalg.matvec(a, b)

    def body(i, w):
        aw = tf.linalg.matvec(a, w)
        grad = ab + c * aw / tf.sqrt(tf.tensordot(w, aw, 1) + 1e-8)
        step = 0.5 / tf.sqrt(tf.cast(i, tf.float32) + 1.0)
        return i + 1, project_to_simplex(w - step * grad, mask)

    _, w = tf.while_loop(lambda i, w: i < ITERATIONS, body, (tf.constant(0), b))
    return w


@WEIGHTINGS.register("cagrad")
class CAGrad(LossWeighting):
    """Shared parameters: (g0 + c G^T w / ||G^T w||) / (1 + alpha^2), present tasks only."""

    Options = Options
    gradient_source = SHARED_PARAMETERS

    def build(self):
        self.current = uniform_weights(len(self.task_names), "cagrad_weights")


    def combine_gradients(self, task_gradients, losses, present):
        alpha = self.options.cagrad_alpha
        mask = present_vector(present, self.task_names)
        static = tf.constant([self.static_weights[n] for n in self.task_names], tf.float32)
        g = stacked_gradients(task_gradients, self.task_names) * static[:, None]  # [T, P]
        gram = tf.matmul(g, g, transpose_b=True)
        w = cagrad_weights(gram, mask, alpha)
        self.current.assign(w)
        b = mask / tf.maximum(tf.reduce_sum(mask), 1.0)
        g0 = tf.linalg.matvec(g, b, transpose_a=True)
        gw = tf.linalg.matvec(g, w, transpose_a=True)
        c = alpha * tf.sqrt(tf.tensordot(b, tf.linalg.matvec(gram, b), 1) + 1e-8)
        update = (g0 + c / (tf.norm(gw) + 1e-8) * gw) / (1.0 + alpha ** 2)
        return local_combination(update, task_gradients[self.task_names[0]])

    def weights(self):
        return {n: self.current[i] for i, n in enumerate(self.task_names)}
