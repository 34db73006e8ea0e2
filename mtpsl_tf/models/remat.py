"""Recomputation ("rematerialisation") of network segments in the backward pass.

`recompute(fn, layer)` wraps a segment so that its forward activations are not kept for the
backward pass: only the segment's inputs are, and the backward pass runs the segment again
(`tf.recompute_grad`, which makes the recomputation depend on the incoming gradient so that
neither Grappler nor XLA can merge it with the first forward pass). Values and gradients are
those of the plain segment.

BatchNorm layers in training mode update their running statistics when they run; the second
run (the recomputation) must not update them again, so it runs with the statistics of every
`BatchNorm` under `layer` frozen (`frozen_statistics`).
"""

from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from mtpsl_tf.models.layers import BatchNorm, layers_switched


def frozen_statistics(layer: keras.layers.Layer):
    """Within the block, the BatchNorms under `layer` trace WITHOUT their running-statistic
    updates (batch statistics are still used in training mode); restored afterwards."""
    return layers_switched(layer, BatchNorm, "freeze_statistics", True)


def recompute(fn: Callable, layer: keras.layers.Layer) -> Callable:
    """`fn` (tensors -> tensor or list of tensors) recomputed in the backward pass.

    `layer` owns every layer `fn` runs (its BatchNorms are frozen during the recomputation).
    Make a new wrapper for every traced call: the wrapper's first run is the forward pass,
    every later run (one per gradient taken) a recomputation.
    """
    runs = []

    def counted(*args):
        runs.append(len(runs))
        if len(runs) == 1:
            return fn(*args)
        with frozen_statistics(layer):
            return fn(*args)

    return tf.recompute_grad(counted)
