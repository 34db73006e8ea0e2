"""The `tiny` backbone (smoke runs): its outputs and their shapes, its config round trip, the
Backbone capabilities the trainer reads, and the flags it refuses."""

import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.models.registry import BACKBONES
from mtpsl_tf.models.tiny import TinyNet

HEADS = {"semantic": {"channels": 13, "activation": "log_softmax"},
         "depth": {"channels": 1, "activation": "linear"},
         "normal": {"channels": 3, "activation": "l2_normalize"}}


@pytest.fixture(scope="module")
def net():
    network = BACKBONES.get("tiny")(heads=HEADS, filters=[4, 4, 8, 8, 6])
    network(tf.zeros([1, 8, 12, 3]))
    return network


def test_outputs_are_keyed_by_task_with_the_declared_shapes(net):
    images = tf.random.stateless_uniform([2, 8, 12, 3], seed=[0, 1])
    out = net(images, training=True)
    assert set(out) == {"semantic", "depth", "normal", "feature", "shared"}
    assert out["semantic"].shape == (2, 8, 12, 13) and out["depth"].shape == (2, 8, 12, 1)
    assert out["normal"].shape == (2, 8, 12, 3) and out["shared"].shape == (2, 8, 12, 4)
    assert out["feature"].shape == (2, 8 // net.feature_stride, 12 // net.feature_stride, 6)
    np.testing.assert_allclose(tf.norm(out["normal"], axis=-1), 1.0, rtol=1e-5)  # finite unit normals
    np.testing.assert_allclose(tf.reduce_sum(tf.exp(out["semantic"]), -1), 1.0, rtol=1e-5)


def test_flat_images_give_finite_normals():
    """A flat image (the synthetic scenes have flat regions) must not give a zero vector to
    the normal head's epsilon-free L2 normalisation: "shared" is conv-BN without a ReLU."""
    network = TinyNet(HEADS, filters=[2, 2, 2, 2, 2])
    out = network(tf.fill([2, 8, 8, 3], 0.5), training=True)
    assert np.isfinite(out["normal"].numpy()).all()


def test_capabilities_the_trainer_reads(net):
    assert net.shared_output == "shared" and net.input_multiple == 2
    kernel = net.last_shared_kernel()
    assert "decoder" in kernel.path and any(kernel is v for v in net.shared_trainable_variables())
    head_variables = {id(v) for layer in net.head_layers().values() for v in layer.trainable_variables}
    assert head_variables and not head_variables & {id(v) for v in net.shared_trainable_variables()}


def test_config_round_trip_gives_the_same_outputs(net):
    clone = TinyNet.from_config(net.get_config())
    images = tf.random.stateless_uniform([1, 8, 12, 3], seed=[2, 3])
    clone(images)
    clone.set_weights(net.get_weights())
    for key in ("semantic", "depth", "normal"):
        np.testing.assert_allclose(clone(images)[key], net(images)[key], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"variant": "deep"}, "--variant='deep'"),
    ({"pretrained": "w.pth"}, "--pretrained='w.pth'"),
    ({"remat": True}, "--remat_backbone=True"),
    ({"filters": [4, 8]}, "5 filter widths"),
    ({"heads": {}}, "at least one task head"),
])
def test_refused_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BACKBONES.get("tiny")(**{"heads": HEADS, **kwargs})


def test_odd_input_size_is_named(net):
    with pytest.raises(ValueError, match="TinyNet input height must be a positive multiple of 2"):
        net(tf.zeros([1, 7, 12, 3]))
