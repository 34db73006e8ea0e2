"""tf.distribute helpers shared by the methods, the loss weightings and the training step."""

from __future__ import annotations

import tensorflow as tf


def replica_sum(value: tf.Tensor) -> tf.Tensor:
    """Sums `value` over replicas when called inside a replica context, else returns it."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or tf.distribute.get_strategy().num_replicas_in_sync == 1:
        return value
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)


def replica_gather(value: tf.Tensor) -> tf.Tensor:
    """Concatenates `value` over replicas along axis 0 (replica order) inside a replica context,
    else returns it. Differentiable: each replica receives the replica-summed gradient of its
    own slice (ReplicaContext.all_gather's gradient), so summing replica gradients still gives
    the single-device gradient."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or tf.distribute.get_strategy().num_replicas_in_sync == 1:
        return value
    return ctx.all_gather(value, axis=0)


def replica_index() -> tf.Tensor:
    """int32 scalar: this replica's index in its sync group (0 outside a strategy)."""
    ctx = tf.distribute.get_replica_context()
    replica = ctx.replica_id_in_sync_group if ctx is not None else 0
    return tf.cast(replica, tf.int32)
