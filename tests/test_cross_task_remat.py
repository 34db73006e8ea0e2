"""--remat_mapping for the cross-task baselines (direct_map, perceptual_map, xtask): the
mapping SegNets recomputed stage by stage give the plain values, gradients and BatchNorm
statistics, in training and in the frozen (perceptual) call; the option reaches the layer."""

import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.config import ExperimentConfig
from mtpsl_tf.methods.base import METHODS
from mtpsl_tf.methods.cross_task.networks import PairMappings
from mtpsl_tf.models.segnet import SegNet
from mtpsl_tf.tasks.depth import Depth
from mtpsl_tf.tasks.semantic import Semantic

HEADS = {"semantic": {"channels": 3, "activation": "log_softmax"},
         "depth": {"channels": 1, "activation": "linear"}}
FILTERS = [4, 4, 8, 8, 8]


def _pair():
    """Plain and recomputed mappings with the same weights, and one input per pair."""
    plain = PairMappings(HEADS, FILTERS, name="plain")
    remat = PairMappings(HEADS, FILTERS, remat=True, name="remat")
    plain.build()
    remat.build()
    remat.set_weights(plain.get_weights())
    inputs = [tf.random.stateless_uniform([2, 32, 32, HEADS[s]["channels"]], seed=[5, k])
              for k, (s, _) in enumerate(plain.pairs())]
    return plain, remat, inputs


def _weights(outputs):
    return [tf.random.stateless_normal(o.shape, seed=[7, k]) for k, o in enumerate(outputs)]


def _assert_close_gradients(got, want):
    # Conv biases before a training-mode BatchNorm have a true gradient of 0 (float noise):
    # the absolute tolerance is relative to the largest gradient.
    scale = max(float(np.abs(g).max()) for g in want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * scale)


def test_training_call_same_loss_gradients_and_statistics():
    """Without XLA: these methods run without it on CPUs (docs/BASELINES.md); the recompute
    wrapper itself compiles under XLA (tests/test_remat.py)."""
    plain, remat, inputs = _pair()
    results = []
    for mappings in (plain, remat):
        @tf.function
        def step(xs, mappings=mappings):
            with tf.GradientTape() as tape:
                tape.watch(xs)
                outs = mappings.map_all(xs, training=True)
                loss = sum(tf.reduce_sum(o * w) for o, w in zip(outs, _weights(outs)))
            return loss, tape.gradient(loss, [*mappings.trainable_variables, *xs])

        loss, grads = step(inputs)
        results.append((float(loss), [g.numpy() for g in grads]))
    (loss, grads), (loss_r, grads_r) = results
    assert loss_r == pytest.approx(loss, rel=1e-6)
    _assert_close_gradients(grads_r, grads)
    # One running-statistics update, not a second one from the recomputation.
    stats, stats_r = ([v.numpy() for v in m.non_trainable_variables] for m in (plain, remat))
    assert all(not np.allclose(s, 0.0) and not np.allclose(s, 1.0) for s in stats)
    for a, b in zip(stats_r, stats):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_frozen_call_same_input_gradients_and_none_to_the_weights():
    plain, remat, inputs = _pair()
    results = []
    for mappings in (plain, remat):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outs = mappings.map_all_frozen(inputs)
            loss = sum(tf.reduce_sum(o * w) for o, w in zip(outs, _weights(outs)))
        grads = tape.gradient(loss, [*inputs, *mappings.trainable_variables])
        results.append((float(loss), grads))
    (loss, grads), (loss_r, grads_r) = results
    assert loss_r == pytest.approx(loss, rel=1e-6)
    count = len(inputs)
    _assert_close_gradients([g.numpy() for g in grads_r[:count]], [g.numpy() for g in grads[:count]])
    assert all(g is None for g in grads_r[count:])  # the perceptual term never trains the mappings


@pytest.mark.parametrize("method", ["direct_map", "perceptual_map"])
def test_option_reaches_the_mappings_and_their_config(method):
    config = ExperimentConfig()
    config.method.method = method
    config.options.update(remat_mapping=True)
    m = METHODS.get(method)(config, [Semantic(3), Depth()])
    network = SegNet({t.name: t.head_spec for t in m.tasks}, filters=FILTERS)
    network(tf.zeros([1, 32, 32, 3]))
    m.build(network)
    assert m.mappings.remat is True
    assert PairMappings.from_config(m.mappings.get_config()).remat is True
