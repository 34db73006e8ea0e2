"""`pcgrad`: projecting conflicting gradients (Yu, Kumar, Gupta, Levine, Hausman & Finn,
"Gradient surgery for multi-task learning", NeurIPS 2020, Alg. 1).

For each task i, g_i' starts at g_i; for each other task j in a random order, if
g_i' . g_j < 0, g_i' <- g_i' - (g_i' . g_j / ||g_j||^2) g_j. The shared parameters get
sum_i g_i' (the paper's sum; LibMTL `LibMTL/weighting/PCGrad.py` and
VICO-UoE/UniversalRepresentations `DensePred/utils/pcgrad.py` follow the same projection).
The task gradients are those of the static-weighted losses w_t L_t; the heads follow the
static-weighted sum. The order is a permutation drawn per task and step from (seed, step)
(`order`), so a step is reproducible and resume is exact (the step counter is checkpointed).

Partial labels: an absent task's gradient is exactly 0; it is skipped as a projection
target (no division by ||0||^2) and adds nothing to the sum.
"""

from __future__ import annotations

import tensorflow as tf

from mtpsl_tf.weighting.base import SHARED_PARAMETERS, WEIGHTINGS, LossWeighting
from mtpsl_tf.weighting.common import EPS, SAME, local_combination, present_vector, stacked_gradients


@WEIGHTINGS.register("pcgrad")
class PCGrad(LossWeighting):
    """Shared parameters: sum_i of g_i projected off the conflicting g_j (random order)."""

    gradient_source = SHARED_PARAMETERS
    constant_weights = True  # no weights: the static ones are applied to the gradients

    def build(self):
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="pcgrad_step", aggregation=SAME)

    def state(self):
        return {"step": self.step}

    def order(self, step, task: int) -> tf.Tensor:
        """The random order `[T]` in which task `task` visits the others at `step`."""
        seed = tf.stack([tf.cast(self.seed, tf.int64) * 1000 + task, tf.cast(step, tf.int64)])
        # argsort of uniforms: a permutation XLA can compile (StatelessShuffle has no XLA kernel).
        return tf.argsort(tf.random.stateless_uniform([len(self.task_names)], seed=seed))


    def combine_gradients(self, task_gradients, losses, present):
        mask = present_vector(present, self.task_names)
        static = tf.constant([self.static_weights[n] for n in self.task_names], tf.float32)
        g = stacked_gradients(task_gradients, self.task_names) * static[:, None]  # [T, P]
        squared = tf.reduce_sum(g * g, axis=1)
        step = self.step.read_value()
        total = tf.zeros_like(g[0])
        for i in range(len(self.task_names)):
            projected = g[i]
            order = self.order(step, i)
            for k in range(len(self.task_names)):
                j = order[k]
                dot = tf.reduce_sum(projected * g[j])
                conflict = tf.cast((dot < 0) & (j != i), tf.float32) * mask[j]
                projected = projected - conflict * dot / tf.maximum(squared[j], EPS) * g[j]
            total = total + mask[i] * projected
        self.step.assign_add(1)
        return local_combination(total, task_gradients[self.task_names[0]])
