"""MTPSL in the conventional semi-supervised setting (--setting=ssl=F, supplement Tab. 8):
which pairs are active, the capacity, the clear error for a mode with no possible pair, and
the per-image term of a fully labelled and an unlabelled image."""

import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.data.registry import DATASETS
from mtpsl_tf.methods.facts import MethodFacts
from mtpsl_tf.methods.mtpsl.method import MTPSL, MTPSLOptions
from mtpsl_tf.methods.mtpsl.pairs import active_pairs
from tests_helpers import TINY, tiny_config

TASKS = tuple(DATASETS.get("synthetic").tasks())


def _facts(**options):
    return MethodFacts(tasks=TASKS, setting_kind="ssl", labelled_counts=(0, 3), options=MTPSLOptions(**options))


def test_auto_mode_is_every_pair_of_fully_labelled_images():
    method = MTPSL(_facts())
    assert method.mode == "mtpsl_plus"
    assert method.capacity(2) == 2 * 6
    active = active_pairs(tf.constant([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]), method.mode).numpy()
    np.testing.assert_array_equal(active[0], 1 - np.eye(3))  # prediction of s vs label of t, all s != t
    np.testing.assert_array_equal(active[1], np.zeros([3, 3]))  # unlabelled image: none


def test_mode_without_any_possible_pair_is_refused():
    with pytest.raises(ValueError, match="--consistency_mode=mtpsl.*no task pair"):
        MTPSL(_facts(consistency_mode="mtpsl"))


def test_fully_labelled_image_gets_a_term_unlabelled_image_none(tmp_path):
    """Through the method's own step: per-image consistency of a fully labelled and an
    unlabelled image (config flags -> facts -> MTPSL, as train.py builds it)."""
    from mtpsl_tf.methods.facts import build_method
    from mtpsl_tf.methods.mtpsl.compact import consistency_loss_compact
    from mtpsl_tf.models.segnet import SegNet

    config = tiny_config(tmp_path, tmp_path / "run", flags=TINY + ["--method=mtpsl", "--setting=ssl=0.5"])
    method = build_method(config, TASKS, label_masks=np.array([[1, 1, 1], [0, 0, 0]] * 3))
    assert method.mode == "mtpsl_plus"
    net = SegNet({t.name: t.head_spec for t in TASKS}, filters=[4, 4, 8, 8, 8])
    rng = np.random.default_rng(0)
    outputs = net(tf.constant(rng.uniform(size=[2, 32, 32, 3]), tf.float32), training=False)
    method.build(net)
    labels = {"semantic": tf.constant(rng.integers(0, 13, [2, 32, 32]), tf.int32),
              "depth": tf.constant(rng.uniform(0.5, 3, [2, 32, 32, 1]), tf.float32),
              "normal": tf.constant(np.tile([0.0, 0.0, 1.0], [2, 32, 32, 1]), tf.float32)}
    mask = {"semantic": tf.constant([1.0, 0.0]), "depth": tf.constant([1.0, 0.0]), "normal": tf.constant([1.0, 0.0])}
    per_image = consistency_loss_compact(method.mapping, outputs, labels, outputs["feature"], mask, method.mode,
                                         capacity=method.capacity(2), seed=tf.constant([1, 2], tf.int64),
                                         tasks=method.tasks).numpy()
    assert per_image[0] > 0 and per_image[1] == 0.0

