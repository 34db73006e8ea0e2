"""`famo`: fast adaptive multitask optimisation (Liu, Liu, Jin, Stone & Liu, "FAMO: fast
adaptive multitask optimization", NeurIPS 2023, Alg. 1).

Task logits xi (start 0), z = softmax(xi). The network follows sum_t log(L_t) z_t / c with
c = sum_t z_t / L_t, i.e. the loss-based weights v_t = z_t / (c L_t) (sum 1) applied to L_t.
xi follows d = J_softmax(xi)^T delta with delta_t = log L_t(before) - log L_t(after) through
its own Adam (lr `--famo_learning_rate` 0.025, L2 `--famo_weight_decay` 1e-3), as LibMTL
`LibMTL/weighting/FAMO.py` (min losses 0, epsilon 1e-8).

Deviation: LibMTL recomputes the losses of the same batch after the network's update (an
extra forward pass); here "after" is the next step's losses (another batch), so xi takes
step k-1's feedback at step k. xi's gradient comes from the tape: the total carries
T - stopgradient(T) with T = sum_t z_t stopgradient(delta_t), which is 0 in value and has
gradient d with respect to xi (the network gets none of it).

Partial labels: v is normalised over the tasks present in the global batch (an absent
task's L_t = 0 would dominate z_t / L_t); delta_t is 0 unless task t is present in both
steps, so xi is not pulled by a task without signal. The previous losses are checkpointed.
`combine` records the step's losses, so the training step calls it once per step.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from mtpsl_tf.optim.optimizers import AdamL2
from mtpsl_tf.options import option
from mtpsl_tf.weighting.base import WEIGHTINGS, LossWeighting
from mtpsl_tf.weighting.common import SAME, global_sum, present_vector, replicas, task_vector

EPSILON = 1e-8  # LibMTL's


@dataclasses.dataclass(frozen=True)
class Options:
    famo_learning_rate: float = option(0.025, "famo weighting: Adam learning rate of the task logits.")
    famo_weight_decay: float = option(1e-3, "famo weighting: L2 weight decay of the task logits.")

    def validate(self):
        if not self.famo_learning_rate > 0:
            raise ValueError(f"--famo_learning_rate must be > 0, got {self.famo_learning_rate}")
        if not self.famo_weight_decay >= 0:
            raise ValueError(f"--famo_weight_decay must be >= 0, got {self.famo_weight_decay}")


@WEIGHTINGS.register("famo")
class FAMO(LossWeighting):
    """sum_t v_t L_t, v = z / (c L) over present tasks; z = softmax(xi), xi learned."""

    Options = Options
    optimizer_group = "famo"

    def build(self):
        count = len(self.task_names)
        self.logits = tf.Variable(tf.zeros([count]), trainable=True, name="famo_logits")
        state = dict(trainable=False, aggregation=SAME)
        self.previous = tf.Variable(tf.zeros([count]), name="famo_previous_losses", **state)
        self.previous_present = tf.Variable(tf.zeros([count]), name="famo_previous_present", **state)
        self.current = tf.Variable(tf.ones([count]) / count, name="famo_weights", **state)

    def trainable_variables(self):
        return [self.logits]

    def make_optimizer(self, steps_per_epoch):
        o = self.options
        return AdamL2(l2=o.famo_weight_decay, learning_rate=o.famo_learning_rate, beta_1=0.9, beta_2=0.999,
                      epsilon=1e-8)

    def state(self):
        return {"previous_losses": self.previous, "previous_present": self.previous_present}

    def combine(self, losses, present):
        dtype = list(losses.values())[0].dtype
        local = task_vector(losses, self.task_names)
        loss = tf.stop_gradient(global_sum(local))
        mask = present_vector(present, self.task_names)
        z = tf.nn.softmax(tf.cast(self.logits, tf.float32))
        ratio = mask * tf.stop_gradient(z) / (loss + EPSILON)
        v = ratio / tf.maximum(tf.reduce_sum(ratio), 1e-30)
        both = mask * self.previous_present
        delta = both * (tf.math.log(self.previous + EPSILON) - tf.math.log(loss + EPSILON))
        feedback = tf.reduce_sum(z * tf.stop_gradient(delta)) / float(replicas())
        self.current.assign(v)
        # A non-finite loss (a step the training loop skips) is not kept as feedback.
        usable = mask * tf.cast(tf.math.is_finite(loss), tf.float32)
        self.previous.assign(tf.where(usable > 0, loss, self.previous))
        self.previous_present.assign(usable)
        total = tf.reduce_sum(tf.stop_gradient(v) * local) + feedback - tf.stop_gradient(feedback)
        return tf.cast(total, dtype)

    def weights(self):
        return {n: self.current[i] for i, n in enumerate(self.task_names)}
