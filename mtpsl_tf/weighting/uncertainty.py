"""`uncertainty`: homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, "Multi-task
learning using uncertainty to weigh losses for scene geometry and semantics", CVPR 2018).

One learned log-variance s_t per task:
    total = sum_t L_t / (c_t exp(s_t)) + s_t / 2,
with c_t = 1 for classifications and 2 for regressions (`Task.uncertainty_factor`), s_t
initialised to -0.5 and trained by the main Adam with the network, as the reference
VICO-UoE/UniversalRepresentations `DensePred/nyu_mtl_baseline.py` (`--weight=uncert`:
`scalars = [1, 2, 2]` for semantic/depth/normal, `logsigma` = -0.5 at start). The applied
weight of task t is 1 / (c_t exp(s_t)). (With `--weight_decay`, s gets the main group's L2 as
every parameter does; the reference uses none.)

Partial labels: a task absent from the global batch (L_t = 0) contributes neither its loss
nor its regulariser s_t / 2, so s_t gets no gradient from that step; without this the
regulariser alone would drive s_t to -infinity (weight to infinity) for a task that is
rarely labelled. Under a tf.distribute strategy `present` is the GLOBAL batch's (a task
labelled on one replica only is present on all), each replica's L_t is its share of the
global-batch loss and each replica adds 1/replicas of the regulariser, so the replicas'
gradients of s (summed by the optimiser) equal one device's; s is an ordinary mirrored
variable trained by the main optimiser. A full mirrored training step equals one device's
(tests/test_weightings_distributed_step.py, docs/WEIGHTINGS.md).
"""

from __future__ import annotations

import tensorflow as tf

from mtpsl_tf.tasks.registry import TASKS
from mtpsl_tf.weighting.base import WEIGHTINGS, LossWeighting
from mtpsl_tf.weighting.common import present_vector, replicas, task_vector, variable_dtype

INITIAL_LOG_VARIANCE = -0.5  # the reference's `Weights.weights.data *= -0.5`


@WEIGHTINGS.register("uncertainty")
class UncertaintyWeighting(LossWeighting):
    """sum_t present_t (L_t / (c_t exp(s_t)) + s_t / 2), s_t learned (variables `[T]`)."""

    def __init__(self, facts):
        super().__init__(facts)
        self.factors = tf.constant([TASKS.get(n).uncertainty_factor for n in self.task_names], tf.float32)

    def build(self):
        self.log_variance = tf.Variable(tf.fill([len(self.task_names)], tf.constant(INITIAL_LOG_VARIANCE, variable_dtype())),
                                        trainable=True, name="uncertainty_log_variance")

    def trainable_variables(self):
        return [self.log_variance]

    def combine(self, losses, present):
        loss = task_vector(losses, self.task_names)
        mask = present_vector(present, self.task_names)
        s = tf.cast(self.log_variance, tf.float32)
        terms = loss / (self.factors * tf.exp(s)) + mask * s / (2.0 * replicas())
        return tf.cast(tf.reduce_sum(terms), list(losses.values())[0].dtype)

    def weights(self):
        w = 1.0 / (self.factors * tf.exp(tf.cast(self.log_variance, tf.float32)))
        return {n: w[i] for i, n in enumerate(self.task_names)}
