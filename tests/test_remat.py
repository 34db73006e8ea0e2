"""Recomputation (--remat_backbone, --remat_mapping): same values, gradients and BatchNorm
statistics as the plain pass; the recomputation compiles under XLA."""

import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.models.segnet import SegNet
from tests_helpers import assert_same_mtpsl_step, mtpsl_batch, tiny_mtpsl_model

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


# Slow (~40 s of CI): `python benchmarks/train_step.py --remat_backbone` compiles the recomputed SegNet
# with XLA (its default); `pytest -m slow` runs this comparison.
@pytest.mark.slow
def test_recomputed_segnet_under_xla_gives_the_same_loss_gradients_and_statistics():
    """Both compiled with XLA (the step without XLA: the MTPSL step test below)."""
    jit_compile = True
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


def test_recomputed_mtpsl_step_gives_the_same_losses_and_gradients():
    """--remat_backbone --remat_mapping: the MTPSL step's terms and every gradient (network,
    mapping net, FiLM tables) and the BatchNorm statistics equal the plain step's."""
    plain, remat = tiny_mtpsl_model(), tiny_mtpsl_model(remat_backbone=True, remat_mapping=True)
    assert_same_mtpsl_step(plain, remat)
    # One BatchNorm statistics update (the recomputation does not update them again).
    for a, b in zip(remat.network.non_trainable_variables, plain.network.non_trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


# Slow (~22 s of CI): `python benchmarks/train_step.py --method=mtpsl --option=remat_mapping=true`
# compiles it with XLA (its default); `pytest -m slow` runs this comparison.
@pytest.mark.slow
def test_recomputed_mapping_net_compiles_under_xla():
    """--remat_mapping under XLA: the consistency loss and its gradients equal the plain
    (uncompiled) ones up to XLA's float reassociation (~3e-5 of the largest gradient here)."""
    from mtpsl_tf.methods.mtpsl.compact import consistency_loss_compact
    from mtpsl_tf.methods.mtpsl.mapping import MappingNet

    net = MappingNet(["semantic", "depth", "normal"], [13, 1, 3], filters=FILTERS)
    batch = mtpsl_batch(None)
    rng = np.random.default_rng(1)
    preds = {"semantic": tf.constant(rng.normal(size=[2, 32, 32, 13]), tf.float32),
             "depth": tf.constant(rng.uniform(0.5, 5, [2, 32, 32, 1]), tf.float32),
             "normal": batch["labels"]["normal"]}
    feat = tf.constant(rng.normal(size=[2, 1, 1, 8]), tf.float32)

    def loss_and_grads(recompute):
        with tf.GradientTape() as tape:
            tape.watch(preds["depth"])
            loss = tf.reduce_sum(consistency_loss_compact(
                net, preds, batch["labels_aug"], feat, tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]),
                "mtpsl_plus", capacity=12, gumbel_noise=tf.zeros([12, 32, 32, 13]), recompute=recompute))
        return loss, tape.gradient(loss, net.trainable_variables + [preds["depth"]])

    loss, grads = loss_and_grads(False)
    loss_x, grads_x = tf.function(lambda: loss_and_grads(True), jit_compile=True)()
    assert float(loss_x) == pytest.approx(float(loss), rel=1e-5)
    scale = max(np.abs(tf.convert_to_tensor(g).numpy()).max() for g in grads)
    for a, b in zip(grads_x, grads):
        np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy(), rtol=1e-3,
                                   atol=1e-4 * scale)
