"""The SSL baseline (`--method=ssl`): each task's consistency term against a numpy
transcription, the view alignment measured through the two-view transform, the method's sum,
XLA + mixed precision, mirrored == one device, and a tiny run through train.py's path."""

import json
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.config import ExperimentConfig
from mtpsl_tf.data import alignment, augment
from mtpsl_tf.methods.ssl import SemiSupervised, parse_thresholds
from mtpsl_tf.tasks.depth import Depth
from mtpsl_tf.tasks.normal import Normal
from mtpsl_tf.tasks.saliency import Saliency
from mtpsl_tf.tasks.semantic import Semantic
from mirrored_check import run_mirrored_script

B, H, W = 2, 4, 6


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ---------- numpy transcriptions of the authors' seg_con / depth_con / normal_con ----------
def np_semantic(pred, target, valid, thr):
    pseudo = target.argmax(-1)
    conf = np.exp(target.max(-1))
    nll = -np.take_along_axis(pred, pseudo[..., None], -1)[..., 0]
    mask = (conf > thr) * valid
    return (nll * mask).sum((1, 2)) / valid.sum((1, 2))


def np_depth(pred, target, valid, thr):
    d = np.abs(target - pred)[..., 0]
    return (d * (d < thr) * valid).sum((1, 2)) / valid.sum((1, 2))


def np_normal(pred, target, valid, thr):
    d = 1.0 - (target * pred).sum(-1)
    return (d * (d < thr) * valid).sum((1, 2)) / valid.sum((1, 2))


def np_binary(pred, target, valid, thr):
    p = 1.0 / (1.0 + np.exp(-target[..., 0]))
    y = (p >= 0.5).astype(np.float64)
    x = pred[..., 0]
    bce = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
    mask = (np.maximum(p, 1 - p) > thr) * valid
    return (bce * mask).sum((1, 2)) / valid.sum((1, 2))


def random_pair(task, rng):
    if isinstance(task, Semantic):
        # Sharp logits so that some pixels pass the 0.95 confidence and some do not.
        return log_softmax(rng.normal(size=[B, H, W, 4]) * 4), log_softmax(rng.normal(size=[B, H, W, 4]) * 4)
    if isinstance(task, Normal):
        a = unit(rng.normal(size=[B, H, W, 3]))
        return a, unit(a + rng.normal(size=[B, H, W, 3]) * 0.4)
    if isinstance(task, Depth):
        a = rng.uniform(1, 2, [B, H, W, 1])
        return a, a + rng.normal(size=[B, H, W, 1]) * 0.1
    return rng.normal(size=[B, H, W, 1]) * 3, rng.normal(size=[B, H, W, 1]) * 5


@pytest.mark.parametrize("task,reference", [(Semantic(4), np_semantic), (Depth(), np_depth),
                                            (Normal(), np_normal), (Saliency(), np_binary)],
                         ids=["semantic", "depth", "normal", "saliency"])
def test_task_ssl_terms_match_numpy(task, reference):
    rng = np.random.default_rng(3)
    pred, target = random_pair(task, rng)
    valid = (rng.uniform(size=[B, H, W]) > 0.2).astype(np.float64)
    thr = task.ssl_threshold
    numerator, count = task.ssl_consistency(tf.constant(pred, tf.float32), tf.constant(target, tf.float32),
                                            tf.constant(valid, tf.float32), thr)
    got = (numerator / count).numpy()
    want = reference(pred, target, valid, thr)
    assert 0 < want.min(), "no pixel passed the threshold: the check would be vacuous"
    np.testing.assert_allclose(got, want, rtol=2e-5)


def test_ssl_target_gets_no_gradient():
    rng = np.random.default_rng(0)
    for task in (Semantic(4), Depth(), Normal(), Saliency()):
        pred, target = (tf.Variable(x, dtype=tf.float32) for x in random_pair(task, rng))
        with tf.GradientTape(persistent=True) as tape:
            numerator, _ = task.ssl_consistency(pred, target, tf.ones([B, H, W]), task.ssl_threshold)
            total = tf.reduce_sum(numerator)
        assert tape.gradient(total, target) is None, task.name
        assert float(tf.reduce_sum(tf.abs(tape.gradient(total, pred)))) > 0, task.name


# ---------- view alignment ----------
def test_view_transform_maps_view2_pixels_onto_view1():
    """Distinct ids per pixel: the id of each view-2 pixel is found within one pixel of its
    aligned view-1 position (the labels' floor-based nearest resize and our rounding of the
    exact position may pick neighbours); the zoom matches the depth ratio; flips are detected."""
    h, w = 24, 32
    ids = np.arange(h * w, dtype=np.int32).reshape(h, w)
    labels = {"semantic": tf.constant(ids), "depth": tf.fill([h, w, 1], 3.0)}
    mirrored_seen = set()
    for seed in range(8):
        image = alignment.with_coordinates(tf.zeros([h, w, 3]))
        image1, labels1, image2, labels2 = augment.two_views(image, labels, [seed, 5], flip=True)
        (_, c1), (_, c2) = alignment.split_coordinates(image1), alignment.split_coordinates(image2)
        transform = alignment.view_transform(c1, c2)[None]
        indices, inside = alignment.view1_positions(transform, h, w)
        assert float(tf.reduce_min(inside)) == 1.0  # view 2 lies inside view 1 (mtan)
        aligned = tf.gather_nd(labels1["semantic"][None], indices, batch_dims=1)[0].numpy()
        truth = labels2["semantic"].numpy()
        # Both are example pixels (ids): compare their example positions.
        rows_off = np.abs(aligned // w - truth // w)
        cols_off = np.abs(aligned % w - truth % w)
        assert rows_off.max() <= 1 and cols_off.max() <= 1, (seed, rows_off.max(), cols_off.max())
        assert (aligned == truth).mean() > 0.3, seed
        zoom, mirrored = alignment.transform_zoom_and_mirror(transform)
        ratio = float(labels1["depth"][0, 0, 0] / labels2["depth"][0, 0, 0])
        np.testing.assert_allclose(float(zoom[0]), ratio, rtol=0.06)
        mirrored_seen.add(bool(mirrored[0]))
    assert mirrored_seen == {True, False}


def test_align_to_view2_applies_flip_and_zoom_hooks():
    from mtpsl_tf.methods.ssl import align_to_view2

    rng = np.random.default_rng(1)
    normals = unit(rng.normal(size=[1, 2, 4, 3])).astype(np.float32)
    depth = rng.uniform(1, 2, [1, 2, 4, 1]).astype(np.float32)
    # A left-right flip at scale 1: col1 = (W - 1) - col2.
    flip = tf.constant([[1.0, 0.0, 0.0, 0.0, -1.0, 3.0]])
    got, inside = align_to_view2(Normal(), tf.constant(normals), flip)
    want = normals[:, :, ::-1] * np.array([-1, 1, 1], np.float32)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
    np.testing.assert_array_equal(inside.numpy(), 1.0)
    # A zoom by 2 around the top-left corner: view-2 pixel p sits at p / 2 in view 1.
    zoom = tf.constant([[0.5, 0.0, 0.0, 0.0, 0.5, 0.0]])
    got, _ = align_to_view2(Depth(), tf.constant(depth), zoom)
    rows = np.round(np.arange(2) * 0.5).astype(int)
    cols = np.round(np.arange(4) * 0.5).astype(int)
    np.testing.assert_allclose(got.numpy(), depth[:, rows][:, :, cols] / 2.0, rtol=1e-6)


# ---------- the method's sum ----------
def make_method(**options):
    config = ExperimentConfig()
    config.method.method, config.data.setting = "ssl", "onelabel"
    config.options.update(options)
    return SemiSupervised(config, [Semantic(4), Depth(), Normal()])


def test_consistency_sums_unlabelled_tasks_weighted_over_batch():
    rng = np.random.default_rng(7)
    method = make_method(ssl_thresholds="depth=0.3")
    method.loss_weights = {"semantic": 1.0, "depth": 2.0, "normal": 0.5}
    tasks = method.tasks
    view1 = {t.name: random_pair(t, rng)[0].astype(np.float32) for t in tasks}
    view2 = {t.name: random_pair(t, rng)[1].astype(np.float32) for t in tasks}
    mask = {"semantic": np.array([1, 0], np.float32), "depth": np.array([0, 1], np.float32),
            "normal": np.array([0, 0], np.float32)}
    flip = np.array([[1, 0, 0, 0, -1, W - 1]] * B, np.float32)
    got = method.consistency({k: tf.constant(v) for k, v in view1.items()},
                             {k: tf.constant(v) for k, v in view2.items()}, tf.constant(flip),
                             {k: tf.constant(v) for k, v in mask.items()}, global_batch_size=4)
    valid = np.ones([B, H, W])
    reference = {"semantic": (np_semantic, 0.95), "depth": (np_depth, 0.3), "normal": (np_normal, 0.1)}
    want = 0.0
    for name, (fn, thr) in reference.items():
        target = view1[name][:, :, ::-1].astype(np.float64)
        if name == "normal":
            target = target * np.array([-1, 1, 1])
        per_image = fn(view2[name].astype(np.float64), target, valid, thr)
        want += method.loss_weights[name] * ((1 - mask[name]) * per_image).sum()
    np.testing.assert_allclose(float(got), want / 4, rtol=1e-5)
    assert want > 0


def test_bad_thresholds_are_rejected_by_flag_name():
    with pytest.raises(ValueError, match="--ssl_thresholds"):
        parse_thresholds("depth:0.1")
    with pytest.raises(ValueError, match="--ssl_thresholds names"):
        make_method(ssl_thresholds="edge=0.5")
    assert parse_thresholds(" semantic=0.9, depth=0.2") == {"semantic": 0.9, "depth": 0.2}


def built_ssl():
    """(ssl method, its built tiny SegNet) for depth + normal, one-label, 32x32 inputs."""
    from mtpsl_tf.models.segnet import SegNet

    config = ExperimentConfig()
    config.method.method, config.data.setting = "ssl", "onelabel"
    tasks = [Depth(), Normal()]
    method = SemiSupervised(config, tasks)
    network = SegNet({t.name: t.head_spec for t in tasks}, filters=[4, 4, 8, 8, 8])
    network(tf.zeros([1, 32, 32, 3]))
    method.build(network)
    return method, network


def ssl_batch(rng, b=4, size=32):
    def normals(n):
        return unit(rng.normal(size=[n, size, size, 3])).astype("float32")
    labels = lambda: {"depth": rng.uniform(0.5, 3, [b, size, size, 1]).astype("float32"), "normal": normals(b)}  # noqa: E731
    scale = np.array([1 / 1.2, 0, 2, 0, -1 / 1.2, size - 3], np.float32)
    return {"image": rng.uniform(size=[b, size, size, 3]).astype("float32"),
            "image_aug": rng.uniform(size=[b, size, size, 3]).astype("float32"),
            "labels": labels(), "labels_aug": labels(),
            "label_mask": {"depth": np.array([1, 0, 0, 1][:b], "float32"),
                           "normal": np.array([0, 1, 1, 0][:b], "float32")},
            "view_transform": np.stack([scale] * b)}


# Slow (~28 s of CI): `python benchmarks/train_step.py --method=ssl --precision=mixed_float16` compiles
# the step with XLA (its default); `pytest -m slow` runs this test.
@pytest.mark.slow
def test_ssl_step_under_xla_and_mixed_precision():
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        method, network = built_ssl()
        batch = tf.nest.map_structure(tf.constant, ssl_batch(np.random.default_rng(0)))
        variables = network.trainable_variables

        @tf.function(jit_compile=True)
        def step(b):
            with tf.GradientTape() as tape:
                parts = method.losses(network, b, 4, tf.constant(0.0), tf.constant(0, tf.int64))
            return parts, tape.gradient(parts["total"], variables)

        parts, grads = step(batch)
        assert np.isfinite(float(parts["total"])) and float(parts["ssl"]) > 0
        assert all(np.isfinite(g.numpy()).all() for g in grads)
    finally:
        keras.mixed_precision.set_global_policy(previous)


MIRRORED = textwrap.dedent("""
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from mirrored_check import assert_gradients_close, replica_sums
    from test_baselines_ssl import built_ssl, ssl_batch

    keras.utils.set_random_seed(0)
    method, network = built_ssl()
    variables = network.trainable_variables
    # Inference-mode BatchNorm: per-replica batch statistics legitimately differ.
    infer = lambda x, training: network(x, training=False)
    batch = tf.nest.map_structure(tf.constant, ssl_batch(np.random.default_rng(0)))
    B = 4

    def step(b):
        with tf.GradientTape() as tape:
            parts = method.losses(infer, b, B, tf.constant(0.0), tf.constant(0, tf.int64))
        return parts["total"], parts["ssl"], tape.gradient(parts["total"], variables)

    total_1, ssl_1, grads_1 = step(batch)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    total_2, ssl_2, grads_2 = replica_sums(strategy, step, batch, 2)
    assert float(ssl_1) > 0, "no consistency: the test would be vacuous"
    np.testing.assert_allclose(float(total_2), float(total_1), rtol=1e-5)
    np.testing.assert_allclose(float(ssl_2), float(ssl_1), rtol=1e-5)
    assert_gradients_close(variables, grads_1, grads_2)
    print("OK", float(total_1), float(ssl_1))
""")


def test_ssl_mirrored_equals_one_device(tmp_path):
    run_mirrored_script(MIRRORED)


def test_ssl_trains_through_run(tmp_path):
    from tests_helpers import SMOKE, tiny_config

    from mtpsl_tf.training.run import run

    model_dir = tmp_path / "ssl"
    report = run(tiny_config(tmp_path, model_dir, flags=SMOKE, epochs=1, method="ssl"))
    history = json.loads((model_dir / "history.json").read_text())
    train = history[0]["train"]
    assert train["nonfinite_steps"] == 0 and train["ssl"] > 0 and np.isfinite(train["total"])
    assert set(report["last"]["metrics"]) >= {"semantic/miou", "depth/abs_err", "normal/mean"}
