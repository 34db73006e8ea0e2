"""Recomputation (--remat_backbone, --remat_mapping): same values, gradients and BatchNorm
statistics as the plain pass; the recomputation compiles under XLA."""

import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.models.segnet import SegNet

HEADS = {"semantic": {"channels": 5, "activation": "log_softmax"},
         "depth": {"channels": 1, "activation": "linear"}}
FILTERS = [4, 8, 8, 8, 8]


def _segnet_pair():
    """Two tiny SegNets, plain and recomputed, with the same weights."""
    plain = SegNet(HEADS, filters=FILTERS, name="plain")
    remat = SegNet(HEADS, filters=FILTERS, remat=True, name="remat")
    images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[1, 2])
    plain(images, training=False)
    remat(images, training=False)
    remat.set_weights(plain.get_weights())
    return plain, remat, images


def _loss_and_grads(network, images, jit_compile):
    weights = {name: tf.random.stateless_normal([2, 32, 32, c["channels"]], seed=[3, k])
               for k, (name, c) in enumerate(HEADS.items())}

    @tf.function(jit_compile=jit_compile)
    def step():
        with tf.GradientTape() as tape:
            out = network(images, training=True)
            loss = sum(tf.reduce_sum(out[n] * w) for n, w in weights.items())
            loss += tf.reduce_sum(tf.square(out["feature"]))
        return loss, tape.gradient(loss, network.trainable_variables)

    loss, grads = step()
    return float(loss), [g.numpy() for g in grads]


def _statistics(network):
    return [v.numpy() for v in network.non_trainable_variables]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_recomputed_segnet_gives_the_same_loss_gradients_and_statistics(jit_compile):
    plain, remat, images = _segnet_pair()
    loss, grads = _loss_and_grads(plain, images, jit_compile)
    loss_r, grads_r = _loss_and_grads(remat, images, jit_compile)
    assert loss_r == pytest.approx(loss, rel=1e-6)
    assert len(grads_r) == len(grads) == len(plain.trainable_variables)
    # Conv biases before a training-mode BatchNorm have a true gradient of 0 (float noise
    # ~1e-5 of the largest gradient under XLA): the absolute tolerance is relative to the
    # largest gradient of the network.
    scale = max(np.abs(b).max() for b in grads)
    for a, b in zip(grads_r, grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * scale)
    # One running-statistics update per step, not a second one from the recomputation.
    moved = [not np.allclose(s, 0.0) and not np.allclose(s, 1.0) for s in _statistics(plain)]
    assert all(moved)
    for a, b in zip(_statistics(remat), _statistics(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_remat_is_saved_in_the_config():
    net = SegNet(HEADS, filters=FILTERS, remat=True)
    assert SegNet.from_config(net.get_config()).remat is True
