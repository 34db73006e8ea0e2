"""Task losses on hand-computed tiny tensors, the SL masked reductions, label checks,
visualisation, and the supervised methods' wiring."""

import math

import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.config import ExperimentConfig
from mtpsl_tf.methods.all import METHODS
from mtpsl_tf.methods.supervised import masked_task_loss, resolve_reduction, supervised_losses
from mtpsl_tf.tasks.all import TASKS
from mtpsl_tf.tasks.depth import Depth
from mtpsl_tf.tasks.normal import Normal
from mtpsl_tf.tasks.semantic import Semantic


def semantic_case():
    """3 images of 1x2 pixels, 3 classes.

    Image 0: labels (0, -1): NLL = -log 0.5.  Image 1: labels (2, 1): NLL mean of -log 0.25, -log 0.6.
    Image 2: all ignored -> 0.
    Per-image totals/counts: (-log .5, 1), (-log .25 - log .6, 2), (0, 0).
    """
    probs = np.array([
        [[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]],
        [[[0.25, 0.5, 0.25], [0.2, 0.6, 0.2]]],
        [[[0.3, 0.3, 0.4], [0.3, 0.3, 0.4]]],
    ], np.float32)
    label = np.array([[[0, -1]], [[2, 1]], [[-1, -1]]], np.int32)
    totals = np.array([-math.log(0.5), -math.log(0.25) - math.log(0.6), 0.0])
    counts = np.array([1.0, 2.0, 0.0])
    return Semantic(3), tf.math.log(probs), tf.constant(label), totals, counts


def depth_case():
    """3 images of 1x3 pixels, 0 = invalid.

    Image 0: pred (1,2,3), gt (0,1,5): |2-1| + |3-5| = 3 over 2 valid.
    Image 1: pred (0,0,0), gt (2,2,2): 6 over 3.  Image 2: all invalid -> 0.
    """
    pred = np.array([[1, 2, 3], [0, 0, 0], [4, 4, 4]], np.float32).reshape(3, 1, 3, 1)
    label = np.array([[0, 1, 5], [2, 2, 2], [0, 0, 0]], np.float32).reshape(3, 1, 3, 1)
    return Depth(), tf.constant(pred), tf.constant(label), np.array([3.0, 6.0, 0.0]), np.array([2.0, 3.0, 0.0])


def normal_case():
    """3 images of 1x3 pixels; all-zero gt = invalid.

    Image 0: dots (1, -, 0) -> count - dot = 2 - 1 = 1 (loss 0.5).
    Image 1: dots (0.6, 0.8, -1) -> 3 - 0.4 = 2.6 (loss 1 - 0.4/3).  Image 2: no valid pixel -> 0.
    """
    x, y, z = np.eye(3, dtype=np.float32)
    zero = np.zeros(3, np.float32)
    a = np.array([0.6, 0.8, 0.0], np.float32)
    pred = np.stack([[x, y, z], [x, a, z], [x, y, z]])[:, None]
    label = np.stack([[x, zero, y], [a, y, -z], [zero, zero, zero]])[:, None]
    return Normal(), tf.constant(pred), tf.constant(label), np.array([1.0, 2.6, 0.0]), np.array([2.0, 3.0, 0.0])


CASES = {"semantic": semantic_case, "depth": depth_case, "normal": normal_case}


@pytest.mark.parametrize("name", list(CASES))
def test_loss_terms_and_per_image_loss(name):
    task, pred, label, totals, counts = CASES[name]()
    total, count = task.loss_terms(pred, label)
    np.testing.assert_allclose(total.numpy(), totals, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(count.numpy(), counts)
    per_image = task.per_image_loss(pred, label).numpy()
    expected = np.array([t / c if c else 0.0 for t, c in zip(totals, counts)])
    assert np.isfinite(per_image).all()  # the empty image gives 0, not NaN
    np.testing.assert_allclose(per_image, expected, rtol=1e-6, atol=1e-7)


def test_hand_values_of_per_image_losses():
    np.testing.assert_allclose(Depth().per_image_loss(*depth_case()[1:3]).numpy(), [1.5, 2.0, 0.0])
    np.testing.assert_allclose(Normal().per_image_loss(*normal_case()[1:3]).numpy(), [0.5, 1 - 0.4 / 3, 0.0], rtol=1e-6)
    sem = Semantic(3).per_image_loss(*semantic_case()[1:3]).numpy()
    np.testing.assert_allclose(sem, [math.log(2), (math.log(4) + math.log(1 / 0.6)) / 2, 0.0], rtol=1e-6)


def test_empty_image_gradient_is_finite():
    task, pred, label, _, _ = depth_case()
    with tf.GradientTape() as tape:
        tape.watch(pred)
        loss = tf.reduce_sum(task.per_image_loss(pred, label))
    grad = tape.gradient(loss, pred).numpy()
    assert np.isfinite(grad).all()
    np.testing.assert_array_equal(grad[2], 0.0)


@pytest.mark.parametrize("name", list(CASES))
def test_per_image_reduction_divides_by_whole_batch(name):
    """sum_n mask_n L(n) / B, B counting unlabelled images (and the empty one)."""
    task, pred, label, totals, counts = CASES[name]()
    per_image = np.array([t / c if c else 0.0 for t, c in zip(totals, counts)])
    mask = tf.constant([1.0, 0.0, 1.0])
    value = masked_task_loss(task, pred, label, mask, global_batch_size=3, reduction="per_image")
    np.testing.assert_allclose(float(value), (per_image[0] + per_image[2]) / 3, rtol=1e-6)
    # A replica holding part of a larger global batch divides by the global size.
    value = masked_task_loss(task, pred, label, tf.ones([3]), global_batch_size=6, reduction="per_image")
    np.testing.assert_allclose(float(value), per_image.sum() / 6, rtol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_batch_reduction_pools_pixels_of_labelled_images(name):
    task, pred, label, totals, counts = CASES[name]()
    value = masked_task_loss(task, pred, label, tf.ones([3]), global_batch_size=3, reduction="batch")
    np.testing.assert_allclose(float(value), totals.sum() / counts.sum(), rtol=1e-6)
    value = masked_task_loss(task, pred, label, tf.constant([0.0, 1.0, 1.0]), global_batch_size=3, reduction="batch")
    np.testing.assert_allclose(float(value), totals[1] / counts[1], rtol=1e-6)
    value = masked_task_loss(task, pred, label, tf.constant([0.0, 0.0, 1.0]), global_batch_size=3, reduction="batch")
    assert float(value) == 0.0  # no valid pixel in the labelled images: 0, not NaN


def test_unknown_reduction_raises():
    task, pred, label, _, _ = depth_case()
    with pytest.raises(ValueError, match="mean_of_pixels"):
        masked_task_loss(task, pred, label, tf.ones([3]), 3, "mean_of_pixels")


def test_sl_masked_total_hand_value():
    """Two tasks, B=3: sum_n sum_{t labelled in n} L_t(n) / B."""
    depth, normal = Depth(), Normal()
    _, dpred, dlabel, _, _ = depth_case()
    _, npred, nlabel, _, _ = normal_case()
    masks = {"depth": tf.constant([1.0, 1.0, 0.0]), "normal": tf.constant([0.0, 1.0, 1.0])}
    parts = supervised_losses([depth, normal], {"depth": dpred, "normal": npred},
                              {"depth": dlabel, "normal": nlabel}, masks, 3, "per_image")
    assert sorted(parts) == ["depth_loss", "normal_loss"]
    total = float(parts["depth_loss"] + parts["normal_loss"])
    np.testing.assert_allclose(total, (1.5 + 2.0 + (1 - 0.4 / 3) + 0.0) / 3, rtol=1e-6)


def config_with(**sections):
    config = ExperimentConfig()
    for section, values in sections.items():
        for key, value in values.items():
            setattr(getattr(config, section), key, value)
    return config


def test_sl_method_losses_sum_to_total():
    depth, normal = Depth(), Normal()
    _, dpred, dlabel, _, _ = depth_case()
    _, npred, nlabel, _, _ = normal_case()
    seen = {}

    def network(images, training):
        seen["training"] = training
        return {"depth": dpred, "normal": npred, "feature": tf.zeros([3, 1, 1, 1])}

    batch = {"image": tf.zeros([3, 1, 3, 3]), "labels": {"depth": dlabel, "normal": nlabel},
             "label_mask": {"depth": tf.constant([1.0, 0.0, 1.0]), "normal": tf.ones([3])}}
    method = METHODS.get("sl")(config_with(data={"setting": "onelabel"}), [depth, normal])
    assert method.loss_names() == ["depth_loss", "normal_loss", "total"]
    parts = method.losses(network, batch, 3, tf.constant(0.0), tf.constant(0, tf.int64))
    assert seen["training"] is True
    np.testing.assert_allclose(float(parts["depth_loss"]), 1.5 / 3, rtol=1e-6)
    np.testing.assert_allclose(float(parts["total"]), float(parts["depth_loss"] + parts["normal_loss"]), rtol=1e-6)


@pytest.mark.parametrize("setting, method, explicit, expected", [
    ("full", "sl", "auto", "batch"),
    ("onelabel", "sl", "auto", "per_image"),
    ("full", "stl", "auto", "per_image"),
    ("full", "sl", "per_image", "per_image"),
    ("onelabel", "sl", "batch", "batch"),
])
def test_resolve_reduction(setting, method, explicit, expected):
    config = config_with(data={"setting": setting}, method={"method": method, "loss_reduction": explicit})
    assert resolve_reduction(config) == expected


def test_stl_requires_valid_task():
    tasks = [Semantic(13), Depth(), Normal()]
    for bad in ("", "edge"):
        with pytest.raises(ValueError, match="stl_task"):
            METHODS.get("stl")(config_with(method={"method": "stl", "stl_task": bad}), tasks)
    method = METHODS.get("stl")(config_with(method={"method": "stl", "stl_task": "depth"}), tasks)
    assert [t.name for t in method.network_tasks()] == ["depth"]
    assert method.loss_names() == ["depth_loss", "total"]


def test_registry_lists_tasks_and_methods():
    assert {"semantic", "depth", "normal"} <= set(TASKS.names())
    assert {"sl", "stl"} <= set(METHODS.names())
    with pytest.raises(KeyError, match="sl"):
        METHODS.get("nope")


@pytest.mark.parametrize("task, label, match", [
    (Semantic(13), np.full((2, 3), 13), "13"),
    (Semantic(13), np.full((2, 3), -2), "-2"),
    (Semantic(13), np.zeros((2, 3, 1)), "shape"),
    (Depth(), -np.ones((2, 3, 1), np.float32), ">= 0"),
    (Depth(), np.full((2, 3, 1), np.nan, np.float32), "finite"),
    (Depth(), np.ones((2, 3), np.float32), "shape"),
    (Normal(), np.full((2, 3, 3), 2.0, np.float32), r"\[-1, 1\]"),
    (Normal(), np.ones((2, 3, 1), np.float32), "shape"),
], ids=lambda v: type(v).__name__ if not isinstance(v, (np.ndarray, str)) else None)
def test_check_label_rejects_bad_labels_naming_location(task, label, match):
    with pytest.raises(ValueError, match=match) as info:
        task.check_label(label, "train/image 17")
    assert "train/image 17" in str(info.value)


@pytest.mark.parametrize("task, label", [
    (Semantic(13), np.array([[-1, 0, 12]])),
    (Depth(), np.array([[[0.0], [3.5], [10.0]]], np.float32)),
    (Normal(), np.array([[[0, 0, 0], [0, 0, 1], [0.6, -0.8, 0]]], np.float32)),
])
def test_check_label_accepts_valid_labels(task, label):
    task.check_label(label, "ok")


def visual_inputs():
    rng = np.random.default_rng(0)
    return [
        (Semantic(5), tf.constant(rng.integers(-1, 5, size=(2, 4, 6)), tf.int32)),
        (Semantic(5), tf.nn.log_softmax(tf.constant(rng.normal(size=(2, 4, 6, 5)), tf.float32))),
        (Depth(), tf.constant(rng.uniform(0, 10, size=(2, 4, 6, 1)), tf.float32)),
        (Depth(), tf.zeros([2, 4, 6, 1])),  # all invalid: no division by zero
        (Normal(), tf.math.l2_normalize(tf.constant(rng.normal(size=(2, 4, 6, 3)), tf.float32), -1)),
    ]


@pytest.mark.parametrize("index", range(5))
def test_visualise_gives_rgb_in_unit_range(index):
    task, value = visual_inputs()[index]
    image = task.visualise(value).numpy()
    assert image.shape == (2, 4, 6, 3) and image.dtype == np.float32
    assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0


def test_semantic_visualise_ignore_is_black_and_classes_distinct():
    image = Semantic(5).visualise(tf.constant([[[-1, 0, 1, 2, 3, 4]]])).numpy()[0, 0]
    np.testing.assert_array_equal(image[0], 0.0)
    assert len({tuple(c) for c in image[1:]}) == 5


def test_semantic_needs_two_classes():
    with pytest.raises(ValueError, match="num_classes"):
        Semantic(1)
