"""The consistency loss over the active items in chunks: the mapping net's activations of one
chunk alive at a time (`--mapping_chunks`, MTPSL's memory option).

`consistency_sum_chunked` returns what `tf.reduce_sum(consistency_loss_compact(...))` returns,
with the same gradients, but runs the mapping net on the `capacity` slots in `chunks`
consecutive groups. Each group's forward pass is followed at once by its backward pass (a
GradientTape inside the forward computation), which yields the group's gradients with respect
to its mapping-net inputs and to the mapping net's variables; the group's activations are then
freed. The gradients are summed over groups and kept (the net's variable gradients plus the
inputs' gradients: small next to the activations), and the backward pass of the step only
scales them by the incoming gradient (`tf.custom_gradient`). The groups run in a
`tf.while_loop` with one iteration at a time, so they never run side by side, and the net's
forward and backward pass are traced once (twice when `capacity` splits into groups of two
sizes) instead of once per group: the step's graph, which stays in host memory, does not grow
with `chunks`.

Exact because the mapping net is per item: its BatchNorm statistics are each item's own
(`ItemBatchNorm`) and it updates no state, so a slot's loss does not depend on which other
slots share its call. Cost: the same one forward and one backward pass of the mapping net as
the plain loss (unlike recomputation, nothing runs twice), in `chunks` smaller calls.

Limits, each checked: the result is one scalar (the method sums the per-image losses; a
weighting never needs them apart), its gradient is first-order only (nothing in the library
differentiates the consistency loss twice), and the net must compute in float32 or float64:
under mixed_float16 each group's backward pass would run in float16 before the optimiser's
dynamic loss scale is known (it arrives with the incoming gradient), so a fixed scale either
underflows small gradients or overflows large ones (a fixed 2^12 overflowed in a test).
"""

from __future__ import annotations

import itertools
from typing import List, Tuple

import tensorflow as tf

from mtpsl_tf.methods.mtpsl.compact import SlotInputs, consistency_loss_compact, embed_rows, slot_inputs
from mtpsl_tf.methods.mtpsl.consistency import pair_loss

def chunk_bounds(capacity: int, chunks: int) -> List[Tuple[int, int]]:
    """`min(chunks, capacity)` consecutive `[start, end)` slot ranges covering `capacity`, the
    first ones one slot longer where `capacity` does not divide evenly."""
    if capacity < 1 or chunks < 1:
        raise ValueError(f"capacity and chunks must be >= 1, got capacity={capacity}, chunks={chunks}")
    chunks = min(chunks, capacity)
    size, extra = divmod(capacity, chunks)
    bounds, start = [], 0
    for j in range(chunks):
        end = start + size + (1 if j < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def check_precision(mapping_net) -> None:
    """Raises ValueError when the net computes in float16 (see the module docstring)."""
    if mapping_net.compute_dtype == "float16":
        raise ValueError("--mapping_chunks > 1 needs a float32 or float64 mapping net, not mixed_float16 (each "
                         "group's gradients would be taken before the loss scale is known); use "
                         "--remat_mapping to save memory under mixed precision")


def _slice(x, start, size):
    """`x[start:start + size]` for a tensor `start`, with a static first dimension."""
    return tf.slice(x, tf.concat([[start], tf.zeros([x.shape.rank - 1], tf.int32)], 0),
                    [size] + x.shape[1:].as_list())


def _rows(x, start, size, capacity):
    """Rows of slots `[start, start + size)` of a `[2K, ...]` tensor: their sources, then their targets."""
    return tf.concat([_slice(x, start, size), _slice(x, capacity + start, size)], axis=0)


def _equal_runs(bounds):
    """`chunk_bounds`' groups as runs of equal size: (first slot, number of groups, size) each
    (at most two runs: the longer groups come first)."""
    runs = []
    for size, same in itertools.groupby(bounds, key=lambda b: b[1] - b[0]):
        same = list(same)
        runs.append((same[0][0], len(same), size))
    return runs


def consistency_sum_chunked(mapping_net, slots: SlotInputs, feat, reg_weight: float, chunks: int,
                            training: bool = True, recompute: bool = False) -> tf.Tensor:
    """Sum over the valid slots of the pair loss, float32 scalar, in `chunks` groups of slots.

    Args:
        mapping_net: the `MappingNet`.
        slots: the slots' mapping-net inputs (`compact.slot_inputs`), `capacity` = K slots.
        feat: the backbone's shared feature `[B, h, w, C]` (no gradient flows into it, as in
            `pair_loss`).
        reg_weight: weight of the feature regulariser.
        chunks: number of groups (at most K are used).
        training: BatchNorm mode of the mapping net (the method uses True).
        recompute: also recompute the blocks of the net inside each group's backward pass
            (`--remat_mapping`: less memory per group, one more forward pass).
    """
    capacity = int(slots.valid.shape[0])
    bounds = chunk_bounds(capacity, chunks)
    item_feat = tf.stop_gradient(tf.gather(tf.convert_to_tensor(feat), slots.image))
    variables = list(mapping_net.trainable_variables)
    check_precision(mapping_net)

    def group(start, size, inputs):
        """(loss, row gradients, variable gradients) of the `size` slots from `start` (a tensor)."""
        rows = [_rows(x, start, size, capacity) for x in inputs]
        with tf.GradientTape() as tape:
            tape.watch(rows)
            embeddings = embed_rows(mapping_net, rows, _rows(slots.item_task, start, size, capacity),
                                    _rows(slots.item_pair, start, size, capacity), training, recompute)
            source, target = tf.split(embeddings, 2, axis=0)
            losses = tf.cast(pair_loss(source, target, tf.cast(_slice(item_feat, start, size), source.dtype),
                                       reg_weight), tf.float32)
            loss = tf.reduce_sum(tf.where(_slice(slots.valid, start, size) > 0, losses, tf.zeros_like(losses)))
        row_grads, var_grads = tape.gradient(loss, [rows, variables],
                                             unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return loss, row_grads, [tf.cast(g, v.dtype) for g, v in zip(var_grads, variables)]

    def groups_of_one_size(first, count, size, inputs, total, var_grads):
        """Runs `count` groups of `size` slots from slot `first`, one after the other, in a
        `tf.while_loop` (its body, the net's forward and backward pass, is traced once however
        many groups: a Python loop would put a copy per group in the step's graph). Returns
        (total, var_grads) accumulated, and per input its row gradients `[2, count * size, ...]`
        (sources, targets)."""
        arrays = [tf.TensorArray(x.dtype, size=count, element_shape=[2 * size] + x.shape[1:].as_list())
                  for x in inputs]

        def body(j, total, var_grads, arrays):
            loss, rows, grads = group(first + j * size, size, inputs)
            arrays = [a.write(j, g) for a, g in zip(arrays, rows)]
            return j + 1, total + loss, [a + b for a, b in zip(var_grads, grads)], arrays

        # parallel_iterations=1: a group starts only after the previous one ended, so one
        # group's activations are alive at a time. maximum_iterations (= count, a no-op bound)
        # states the trip count in the graph, where benchmarks/train_step.py counts FLOPs.
        _, total, var_grads, arrays = tf.while_loop(
            lambda j, *_: j < count, body, (tf.constant(0), total, var_grads, arrays), parallel_iterations=1,
            maximum_iterations=count)
        row_grads = []
        for a, x in zip(arrays, inputs):
            stacked = tf.reshape(a.stack(), [count, 2, size] + x.shape[1:].as_list())  # [group, source/target, slot, ...]
            row_grads.append(tf.reshape(tf.transpose(stacked, [1, 0, 2] + list(range(3, stacked.shape.rank))),
                                        [2, count * size] + x.shape[1:].as_list()))
        return total, var_grads, row_grads

    @tf.custom_gradient
    def run(*inputs):
        total = tf.constant(0.0)
        var_grads = [tf.zeros(v.shape, v.dtype) for v in variables]
        parts = []
        for first, count, size in _equal_runs(bounds):
            # A second run waits for the first: its loop takes the first one's sums as inputs.
            total, var_grads, rows = groups_of_one_size(first, count, size, inputs, total, var_grads)
            parts.append(rows)
        # Back to the [2K, ...] layout of the inputs: sources of every group, then targets.
        input_grads = []
        for u, x in enumerate(inputs):
            sources = [rows[u][0] for rows in parts]
            targets = [rows[u][1] for rows in parts]
            input_grads.append(tf.cast(tf.concat(sources + targets, axis=0), x.dtype))
        by_ref = {_tf_variable(v).ref(): g for v, g in zip(variables, var_grads)}

        def grad(upstream, variables=None):
            dx = [g * tf.cast(upstream, g.dtype) for g in input_grads]
            dv = [_scaled(by_ref, v, upstream) for v in (variables or [])]
            return dx, dv

        return total, grad

    return run(*slots.inputs)


def consistency_sum(mapping_net, preds, labels, feat, label_mask, mode: str, capacity: int, chunks: int = 1,
                    seed=None, reg_weight: float = 0.5, tasks=None, recompute: bool = False,
                    skip_unannotated: bool = True) -> tf.Tensor:
    """Sum over the images of `consistency_loss_compact` (same arguments, training mode), float32
    scalar: in one mapping-net call for `chunks` = 1, else in `chunks` groups of slots."""
    if chunks <= 1:
        return tf.reduce_sum(consistency_loss_compact(
            mapping_net, preds, labels, feat, label_mask, mode, capacity=capacity, seed=seed, reg_weight=reg_weight,
            training=True, tasks=tasks, recompute=recompute, skip_unannotated=skip_unannotated))
    slots = slot_inputs(mapping_net, preds, labels, label_mask, mode, capacity, seed=seed, tasks=tasks,
                        skip_unannotated=skip_unannotated)
    return consistency_sum_chunked(mapping_net, slots, feat, reg_weight, chunks, recompute=recompute)


def _tf_variable(variable) -> tf.Variable:
    """The tf.Variable behind a Keras variable (custom_gradient hands those to `grad`)."""
    value = variable if isinstance(variable, tf.Variable) else variable.value
    if not isinstance(value, tf.Variable):
        raise TypeError(f"expected a variable backed by a tf.Variable, got {type(value).__name__} for {variable}")
    return value


def _scaled(by_ref, variable, upstream):
    """The kept gradient of `variable` times the incoming gradient; zeros for a variable the
    groups did not differentiate (none is expected: every variable read is the net's)."""
    gradient = by_ref.get(variable.ref())
    if gradient is None:
        return tf.zeros(variable.shape, variable.dtype)
    return gradient * tf.cast(upstream, gradient.dtype)
