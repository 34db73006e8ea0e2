"""Helpers shared by the weightings: task vectors, replica sums and flat task gradients.

Every value a weighting decides from (losses, gradients, their norms) must be the GLOBAL
batch's, so that MirroredStrategy gives the single-device weights: each replica sees its
share of each loss and gradient, and `global_sum` adds the shares. A gradient-based weighting
computes its combination `c` from the global per-task gradients and returns `c / replicas()`,
since the optimiser sums the replicas' gradients again.
"""

from __future__ import annotations

from typing import List, Mapping, Sequence

import keras
import tensorflow as tf

from mtpsl_tf.distribute import replica_sum

EPS = 1e-12  # guards divisions by norms and losses that may be exactly 0
# Aggregation of state variables assigned inside the training step: every replica computes the
# same (global) value, so the first replica's assignment is the one kept.
SAME = tf.VariableAggregation.ONLY_FIRST_REPLICA


def replicas() -> int:
    """The number of replicas summing this step's gradients (1 outside a replica context)."""
    if tf.distribute.get_replica_context() is None:
        return 1
    return tf.distribute.get_strategy().num_replicas_in_sync


# `value` summed over the replicas (itself with one replica).
global_sum = replica_sum


def variable_dtype() -> str:
    """The dtype of a weighting's variables trained with the network's (main) optimiser: the
    global Keras policy's variable dtype, so one all-reduce can batch their gradients with the
    network's (float32, also under mixed precision; float64 in float64 tests)."""
    return keras.config.dtype_policy().variable_dtype


def uniform_weights(count: int, name: str) -> tf.Variable:
    """A state variable of `count` weights, 1 / count each, assigned inside the step (SAME)."""
    return tf.Variable(tf.ones([count]) / count, trainable=False, name=name, aggregation=SAME)


def task_vector(values: Mapping[str, tf.Tensor], names: Sequence[str]) -> tf.Tensor:
    """float32 `[T]` of `values[name]` in task order."""
    return tf.stack([tf.cast(values[n], tf.float32) for n in names])


def present_vector(present: Mapping[str, tf.Tensor], names: Sequence[str]) -> tf.Tensor:
    """float32 `[T]`: 1 where the task has a labelled image in the global batch."""
    return tf.stack([tf.cast(present[n], tf.float32) for n in names])


def stacked_gradients(task_gradients: Mapping[str, Sequence[tf.Tensor]], names: Sequence[str]) -> tf.Tensor:
    """The global per-task gradients flattened: float32 `[T, P]` (P = shared parameters)."""
    rows = [tf.concat([tf.reshape(tf.cast(g, tf.float32), [-1]) for g in task_gradients[n]], 0) for n in names]
    return global_sum(tf.stack(rows))


def unflatten(vector: tf.Tensor, like: Sequence[tf.Tensor]) -> List[tf.Tensor]:
    """`vector` `[P]` split and reshaped like the tensors of `like` (dtypes of `like`)."""
    sizes = [t.shape.num_elements() if t.shape.is_fully_defined() else tf.size(t) for t in like]
    parts = tf.split(vector, sizes)
    return [tf.cast(tf.reshape(p, tf.shape(t)), t.dtype) for p, t in zip(parts, like)]


def local_combination(vector: tf.Tensor, like: Sequence[tf.Tensor]) -> List[tf.Tensor]:
    """A combination of GLOBAL gradients `[P]` as this replica's share, shaped like `like`."""
    return unflatten(vector / float(replicas()), like)


@tf.function  # eager callers (tests) would otherwise run the loop in Python
def min_norm_weights(gram: tf.Tensor, mask: tf.Tensor, iterations: int = 250) -> tf.Tensor:
    """The convex weights `w` `[T]` minimising || sum_t w_t g_t ||^2 given the Gram matrix
    `gram[i, j] = g_i . g_j` `[T, T]`, over the tasks with `mask` 1 only (the others get 0).

    Frank-Wolfe with exact line search, as Sener & Koltun's MinNormSolver
    (`find_min_norm_element_FW`): start uniform, move towards the vertex of smallest
    `(G w)_t`; a fixed iteration count keeps the step traceable under XLA.
    """
    mask = tf.cast(mask, tf.float32)
    count = tf.maximum(tf.reduce_sum(mask), 1.0)
    w = mask / count
    big = tf.reduce_max(tf.abs(gram)) * 10.0 + 1.0

    def body(i, w):
        gw = tf.linalg.matvec(gram, w)
        t = tf.argmin(gw + (1.0 - mask) * big)  # absent tasks are never chosen
        v1v1 = tf.tensordot(w, gw, 1)
        v1v2 = gw[t]
        v2v2 = gram[t, t]
        # Minimiser of || gamma x + (1 - gamma) e_t ||^2 over gamma in [0, 1] (x = current point).
        gamma = tf.where(v1v2 >= v1v1, 1.0,
                         tf.where(v1v2 >= v2v2, 0.0,
                                  (v2v2 - v1v2) / tf.maximum(v1v1 + v2v2 - 2.0 * v1v2, EPS)))
        return i + 1, gamma * w + (1.0 - gamma) * tf.one_hot(t, tf.shape(w)[0])

    _, w = tf.while_loop(lambda i, w: i < iterations, body, (tf.constant(0), w))
    return w
