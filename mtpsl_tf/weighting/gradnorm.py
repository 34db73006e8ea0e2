"""`gradnorm`: gradient normalisation (Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm:
gradient normalization for adaptive loss balancing in deep multitask networks", ICML 2018).

Learned weights w_t (start 1); each step, on the last shared layer W:
    G_t = || w_t grad_W L_t ||,   r_t = (L_t / L_t(0)) / mean_k (L_k / L_k(0)),
    L_grad = sum_t | G_t - stopgrad(mean_k G_k r_t^alpha) |,
the weights follow grad_w L_grad (main Adam, with the network), then w <- K w / sum_k w_k;
the network follows sum_t w_t L_t (w held constant). alpha = `--gradnorm_alpha` (1.5). As
the reference VICO-UoE/UniversalRepresentations `DensePred/nyu_mtl_baseline.py`
(`--weight=gradnorm`): W is the last shared convolution's kernel (there
`backbone.layer4[-1].conv3.weight`; here the backbone's `last_shared_kernel()`: the last
conv of SegNet's shared decoder, of ResNet's layer4), L_t(0) are the losses of the first step, the
weights share the network's optimiser and are renormalised after each update.

Partial labels: L_t(0) is the task's loss at the first step it is present (kept per task,
checkpointed). Only the tasks present in the global batch enter the means of r and G and
L_grad, so an absent task's weight gets no gradient that step (its Adam moments still decay
as any parameter's with a zero gradient); the renormalisation keeps sum_k w_k = K.

Under a tf.distribute strategy the losses and the last shared layer's task gradients are
all-reduced before the norms are taken, so every replica computes the same GradNorm
gradient; it returns 1/replicas of it (the optimiser sums replicas) and its variables use
ONLY_FIRST_REPLICA aggregation. A full mirrored training step equals one device's
(tests/test_weightings_distributed_step.py, docs/WEIGHTINGS.md).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from mtpsl_tf.options import option
from mtpsl_tf.weighting.base import SHARED_PARAMETERS, WEIGHTINGS, LossWeighting
from mtpsl_tf.weighting.common import EPS, SAME, global_sum, present_vector, replicas, task_vector, variable_dtype


@dataclasses.dataclass(frozen=True)
class Options:
    gradnorm_alpha: float = option(1.5, "gradnorm weighting: the restoring-force strength alpha.")

    def validate(self):
        if not self.gradnorm_alpha >= 0:
            raise ValueError(f"--gradnorm_alpha must be >= 0, got {self.gradnorm_alpha}")



@WEIGHTINGS.register("gradnorm")
class GradNorm(LossWeighting):
    """sum_t w_t L_t; w `[T]` learned by the GradNorm loss on the last shared layer."""

    Options = Options
    gradient_source = SHARED_PARAMETERS

    def build(self):
        count = len(self.task_names)
        self.task_weights = tf.Variable(tf.ones([count], variable_dtype()), trainable=True, name="gradnorm_weights",
                                        aggregation=SAME)
        state = dict(trainable=False, aggregation=SAME)
        self.initial = tf.Variable(tf.zeros([count]), name="gradnorm_initial_losses", **state)
        self.started = tf.Variable(tf.zeros([count]), name="gradnorm_started", **state)

    def trainable_variables(self):
        return [self.task_weights]

    def state(self):
        return {"initial_losses": self.initial, "started": self.started}

    def combine(self, losses, present):
        del present
        loss = task_vector(losses, self.task_names)
        w = tf.cast(tf.stop_gradient(self.task_weights), tf.float32)
        return tf.cast(tf.reduce_sum(w * loss), list(losses.values())[0].dtype)

    def combine_gradients(self, task_gradients, losses, present):
        w = tf.stop_gradient(self.task_weights)
        out = []
        for parts in zip(*(task_gradients[n] for n in self.task_names)):
            out.append(tf.add_n([tf.cast(w[i], g.dtype) * g for i, g in enumerate(parts)]))
        return out

    def variable_gradients(self, task_gradients, losses, present, last_shared):
        mask = present_vector(present, self.task_names)
        loss = global_sum(task_vector(losses, self.task_names))
        # L_t(0): the first loss of each task seen present (this step's for a new task).
        # A non-finite loss (a step the training loop skips) never becomes L_t(0).
        usable = mask * tf.cast(tf.math.is_finite(loss), tf.float32)
        initial = tf.where(usable * (1.0 - self.started) > 0, loss, self.initial)
        self.initial.assign(initial)
        self.started.assign(tf.maximum(self.started, usable))
        g = tf.stack([tf.reshape(tf.cast(task_gradients[n][last_shared], tf.float32), [-1]) for n in self.task_names])
        g = global_sum(g)
        raw = tf.norm(g, axis=1)  # ||grad_W L_t||, [T]
        w = tf.cast(self.task_weights, tf.float32)
        norms = tf.abs(w) * raw
        count = tf.maximum(tf.reduce_sum(mask), 1.0)
        ratio = mask * loss / tf.maximum(initial, EPS)
        inverse_rate = ratio / tf.maximum(tf.reduce_sum(ratio) / count, EPS)
        target = tf.reduce_sum(mask * norms) / count * inverse_rate ** self.options.gradnorm_alpha
        # d/dw_t sum_k |w_k |g_k| - target_k| = sign(G_t - target_t) sign(w_t) |g_t|.
        grad = mask * tf.sign(norms - target) * tf.sign(w) * raw
        return [tf.cast(grad / float(replicas()), self.task_weights.dtype)]

    def after_update(self):
        w = self.task_weights
        self.task_weights.assign(len(self.task_names) * w / tf.reduce_sum(w))

    def weights(self):
        return {n: tf.cast(self.task_weights[i], tf.float32) for i, n in enumerate(self.task_names)}
