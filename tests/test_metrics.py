"""Tests of mtpsl_tf.metrics: reference parity, streaming, tf.distribute, Delta-MTL."""

import json
import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.metrics import ConfusionMatrix, DepthMetrics, NormalMetrics, delta_mtl

RTOL = 1e-5  # the parity README's tolerance for metrics
BIN = 0.005  # NormalMetrics' default median histogram resolution, degrees
NUM_CLASSES = 13


def _values(metric):
    return {k: float(v) for k, v in metric.result().items()}


def _inputs(parity):
    """(metric factory, update arguments) per task, from the parity fixture's eval outputs."""
    return {
        "semantic": (
            lambda: ConfusionMatrix(NUM_CLASSES),
            (parity["seg_label"], np.argmax(parity["eval_semantic_logprob"], axis=-1)),
        ),
        "depth": (DepthMetrics, (parity["depth_label"], parity["eval_depth"])),
        "normal": (NormalMetrics, (parity["normal_label"], parity["eval_normal"])),
    }


def _evaluated(parity, task):
    make, args = _inputs(parity)[task]
    metric = make()
    metric.update_state(*args)
    return _values(metric)


def _reference_angles(gt, pred):
    """The reference's per-pixel angles (float32, as SegNet.normal_error) of the valid pixels."""
    valid = gt.sum(axis=-1) != 0
    cosine = np.clip((pred * gt).sum(axis=-1), -1, 1)[valid]
    return np.degrees(np.arccos(cosine))


# ---------------------------------------------------------------- parity with the fixture


def test_confusion_matrix_matches_reference(parity):
    got = _evaluated(parity, "semantic")
    assert got["miou"] == pytest.approx(parity["metric_miou"], rel=RTOL)
    assert got["pixel_acc"] == pytest.approx(parity["metric_pixacc"], rel=RTOL)


def test_depth_metrics_match_reference(parity):
    got = _evaluated(parity, "depth")
    assert got["abs_err"] == pytest.approx(parity["metric_depth_l1"], rel=RTOL)
    assert got["abs_err"] == pytest.approx(parity["metric_depth_abs_err"], rel=RTOL)
    assert got["rmse"] == pytest.approx(parity["metric_depth_rmse"], rel=RTOL)
    assert got["rel_err"] == pytest.approx(parity["metric_depth_rel_err"], rel=RTOL)


def test_normal_metrics_match_reference(parity):
    got = _evaluated(parity, "normal")
    assert got["mean"] == pytest.approx(parity["metric_normal_mean"], rel=RTOL)
    assert got["mean"] == pytest.approx(parity["metric_normal_angle_mean"], rel=RTOL)
    assert got["rmse"] == pytest.approx(parity["metric_normal_rmse"], rel=RTOL)
    for t in ("11.25", "22.5", "30"):
        # NormalsMeter gives percent, SegNet.normal_error fractions; we give percent.
        assert got[f"within_{t}"] == pytest.approx(parity[f"metric_normal_{t}"], rel=RTOL)
        assert got[f"within_{t}"] / 100 == pytest.approx(
            parity[f"metric_normal_within_{t}"], rel=RTOL
        )
    # The histogram median is exact to within one bin (plus float32 noise in the fixture).
    assert abs(got["median"] - float(parity["metric_normal_angle_median"])) <= BIN + 1e-4


# ---------------------------------------------------------------- hand-computed cases


def test_confusion_matrix_hand_case_skips_classes_without_union():
    metric = ConfusionMatrix(4)
    label = np.array([[[0, 1], [1, -1]], [[2, 4], [0, 0]]])  # -1 and 4 (>= C) are ignored
    pred = np.array([[[0, 1], [0, 3]], [[3, 0], [0, 2]]])
    metric.update_state(label, pred)
    # counted (label, pred): (0,0) (1,1) (1,0) (2,3) (0,0) (0,2)
    expected = np.zeros((4, 4), np.int64)
    for t, p in [(0, 0), (1, 1), (1, 0), (2, 3), (0, 0), (0, 2)]:
        expected[t, p] += 1
    np.testing.assert_array_equal(metric.matrix.numpy(), expected)
    iou = metric.per_class_iou().numpy()
    # IoU = diag / (row + col - diag); class 3 is predicted but never labelled: IoU 0, counted.
    np.testing.assert_allclose(iou, [2 / (3 + 3 - 2), 1 / (2 + 1 - 1), 0.0, 0.0])
    got = _values(metric)
    assert got["miou"] == pytest.approx((1 / 2 + 1 / 2) / 4)
    assert got["pixel_acc"] == pytest.approx(3 / 6)


def test_confusion_matrix_absent_class_is_nan_per_class_and_skipped_in_miou():
    metric = ConfusionMatrix(3)
    metric.update_state(np.array([[[0, 1]]]), np.array([[[0, 0]]]))
    iou = metric.per_class_iou().numpy()
    assert iou[0] == pytest.approx(1 / 2) and iou[1] == 0.0 and math.isnan(iou[2])
    assert _values(metric)["miou"] == pytest.approx(1 / 4)  # mean over classes 0 and 1 only


def test_confusion_matrix_rejects_bad_inputs():
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(0)
    metric = ConfusionMatrix(3)
    with pytest.raises(TypeError, match="integer"):
        metric.update_state(np.zeros((1, 2, 2), np.float32), np.zeros((1, 2, 2), np.int32))
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        metric.update_state(np.zeros((1, 2, 2, 1), np.int32), np.zeros((1, 2, 2, 1), np.int32))
    with pytest.raises(ValueError, match="differ"):
        metric.update_state(np.zeros((1, 2, 2), np.int32), np.zeros((1, 2, 3), np.int32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="pred_label must be in"):
        metric.update_state(np.zeros((1, 1, 2), np.int32), np.array([[[0, 3]]]))


def test_depth_hand_case_clamps_like_depthmeter():
    gt = np.array([[[1.0, 2.0], [0.0, 4.0]]], np.float32)[..., None]
    pred = np.array([[[2.0, 2.0], [5.0, -1.0]]], np.float32)[..., None]
    metric = DepthMetrics()
    metric.update_state(gt, pred)
    got = _values(metric)
    # Valid: gt != 0 (3 pixels). abs/rmse clamp pred -1 -> 1e-9 (error 4); rel_err does not (5/4).
    assert got["abs_err"] == pytest.approx((1 + 0 + 4) / 3)
    assert got["rmse"] == pytest.approx(math.sqrt((1 + 0 + 16) / 3))
    assert got["rel_err"] == pytest.approx((1 + 0 + 1.25) / 3)


def test_depth_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[B, H, W, 1\]"):
        DepthMetrics().update_state(np.ones((1, 2, 2, 3)), np.ones((1, 2, 2, 3)))
    with pytest.raises(ValueError, match=r"\[B, H, W, 1\]"):
        DepthMetrics().update_state(np.ones((1, 2, 2)), np.ones((1, 2, 2)))


def _unit(angle_deg):
    """Unit vector at `angle_deg` from +z, in the y-z plane."""
    a = math.radians(angle_deg)
    return [0.0, math.sin(a), math.cos(a)]


def test_normal_hand_case():
    z = [0.0, 0.0, 1.0]
    gt = np.array([[[z, z], [z, [0.0, 0.0, 0.0]]]], np.float32)
    # The components of this unit gt sum to 0: the reference (and we) treat it as invalid.
    gt = np.concatenate([gt, np.array([[[[0.6, -0.6, 0.0], z]]], np.float32)], axis=1)
    pred = np.array(
        [[[z, [1.0, 0.0, 0.0]], [_unit(20), z], [z, _unit(40)]]], np.float32
    )  # angles: 0, 90, 20, (invalid), (invalid), 40
    metric = NormalMetrics()
    metric.update_state(gt, pred)
    got = _values(metric)
    angles = [0.0, 90.0, 20.0, 40.0]
    assert got["mean"] == pytest.approx(np.mean(angles), rel=1e-6)
    assert got["rmse"] == pytest.approx(math.sqrt(np.mean(np.square(angles))), rel=1e-6)
    assert abs(got["median"] - 30.0) <= BIN
    assert got["within_11.25"] == pytest.approx(25.0)
    assert got["within_22.5"] == pytest.approx(50.0)
    assert got["within_30"] == pytest.approx(50.0)


@pytest.mark.parametrize("count", [1001, 1000])  # odd: middle value; even: mean of the two
@pytest.mark.parametrize("bin_degrees", [BIN, 0.5])
def test_normal_streaming_median_within_one_bin(count, bin_degrees):
    rng = np.random.default_rng(count)
    pred = rng.normal(size=(1, 1, count, 3)).astype(np.float32)
    pred /= np.linalg.norm(pred, axis=-1, keepdims=True)
    gt = np.broadcast_to(np.array([0.0, 0.0, 1.0], np.float32), pred.shape)
    metric = NormalMetrics(median_bin_degrees=bin_degrees)
    metric.update_state(gt, pred)
    exact = np.median(_reference_angles(gt, pred))
    assert abs(float(metric.median()) - exact) <= bin_degrees


def test_normal_rejects_bad_inputs():
    with pytest.raises(ValueError, match="median_bin_degrees"):
        NormalMetrics(median_bin_degrees=0.0)
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        NormalMetrics().update_state(np.ones((1, 2, 2, 1)), np.ones((1, 2, 2, 1)))


# ---------------------------------------------------------------- streaming behaviour


@pytest.mark.parametrize("task", ["semantic", "depth", "normal"])
def test_two_half_batches_equal_one_batch(parity, task):
    make, args = _inputs(parity)[task]
    metric = make()
    for i in range(2):
        metric.update_state(*(a[i : i + 1] for a in args))
    streamed = _values(metric)
    for key, value in _evaluated(parity, task).items():
        assert streamed[key] == pytest.approx(value, rel=1e-12), key


@pytest.mark.parametrize("task", ["semantic", "depth", "normal"])
def test_reset_state(parity, task):
    make, args = _inputs(parity)[task]
    metric = make()
    metric.update_state(*(a[:1] for a in args))
    metric.reset_state()
    assert all(math.isnan(v) for v in _values(metric).values())  # nothing seen: NaN, not 0
    metric.update_state(*args)
    assert _values(metric) == _evaluated(parity, task)


@pytest.mark.parametrize("task", ["semantic", "depth", "normal"])
def test_sample_weight_skips_unlabelled_images(parity, task):
    make, args = _inputs(parity)[task]
    masked = make()
    masked.update_state(*args, sample_weight=np.array([0.0, 1.0], np.float32))
    second_only = make()
    second_only.update_state(*(a[1:] for a in args))
    assert _values(masked) == _values(second_only)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_graph_and_xla_match_eager(parity, jit_compile):
    inputs = _inputs(parity)
    metrics = {task: make() for task, (make, _) in inputs.items()}

    @tf.function(jit_compile=jit_compile)
    def step(batch):
        for task, metric in metrics.items():
            metric.update_state(*batch[task])
        return {task: metric.result() for task, metric in metrics.items()}

    out = step({task: args for task, (_, args) in inputs.items()})
    for task in inputs:
        for key, value in _evaluated(parity, task).items():
            # XLA may reorder the float64 sums of float32 values: relative 1e-7 slack.
            assert float(out[task][key]) == pytest.approx(value, rel=1e-7), (task, key)


@pytest.mark.parametrize(
    "metric",
    [
        ConfusionMatrix(5, name="seg"),
        DepthMetrics(name="dep"),
        NormalMetrics(name="nor", median_bin_degrees=0.01),
    ],
)
def test_serialisation_round_trip(metric):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
    assert type(restored) is type(metric)
    assert restored.get_config() == metric.get_config()


# ---------------------------------------------------------------- tf.distribute

_DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    # Two logical CPUs: must be configured before TensorFlow initialises its devices.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from mtpsl_tf.metrics import ConfusionMatrix, DepthMetrics, NormalMetrics

    data = np.load(sys.argv[1])
    batch = {
        "seg": data["seg_label"], "seg_pred": np.argmax(data["eval_semantic_logprob"], -1),
        "depth": data["depth_label"], "depth_pred": data["eval_depth"],
        "normal": data["normal_label"], "normal_pred": data["eval_normal"],
    }

    def make():
        return {"semantic": ConfusionMatrix(13), "depth": DepthMetrics(), "normal": NormalMetrics()}

    def update(metrics, b):
        metrics["semantic"].update_state(b["seg"], b["seg_pred"])
        metrics["depth"].update_state(b["depth"], b["depth_pred"])
        metrics["normal"].update_state(b["normal"], b["normal_pred"])

    def results(metrics):
        out = {f"{t}/{k}": float(v) for t, m in metrics.items() for k, v in m.result().items()}
        out["depth/n_valid"] = int(metrics["depth"].n_valid.numpy())
        return out

    single = make()
    update(single, batch)

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        dist = make()

    @tf.function
    def step(b):
        def replica_fn(b):
            update(dist, b)
            return tf.shape(b["seg"])[0]
        return strategy.run(replica_fn, args=(b,))

    dataset = tf.data.Dataset.from_tensor_slices(batch).batch(2)  # one image per replica
    sizes = []
    for b in strategy.experimental_distribute_dataset(dataset):
        sizes.append([int(s) for s in strategy.experimental_local_results(step(b))])

    class Evaluator(keras.Model):
        # No weights: test_step feeds the stored predictions to the metrics.
        def __init__(self):
            super().__init__()
            self.seg_metric = ConfusionMatrix(13)
        def call(self, x):
            return x
        def test_step(self, b):
            self.seg_metric.update_state(b["seg"], b["seg_pred"])
            return self.get_metrics_result()

    with strategy.scope():
        model = Evaluator()
        model.compile()
    logs = model.evaluate(dataset, return_dict=True, verbose=0)
    print(json.dumps({"single": results(single), "dist": results(dist), "sizes": sizes,
                      "evaluate": {k: float(logs[k]) for k in ("miou", "pixel_acc")}}))
    """
)


def test_mirrored_strategy_sums_state_across_replicas(parity_dir):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-c", _DISTRIBUTED_SCRIPT, str(parity_dir / "nyuv2_segnet_w8_64x96.npz")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["sizes"] == [[1, 1]]  # each replica really saw one of the two images
    assert out["dist"] == pytest.approx(out["single"], rel=1e-12)
    assert out["evaluate"]["miou"] == pytest.approx(out["single"]["semantic/miou"], rel=1e-12)
    assert out["evaluate"]["pixel_acc"] == pytest.approx(
        out["single"]["semantic/pixel_acc"], rel=1e-12
    )


# ---------------------------------------------------------------- Delta-MTL


def test_delta_mtl_hand_values():
    results = {"a/miou": 0.5, "b/err": 0.3, "unused": 7.0}
    reference = {"a/miou": 0.4, "b/err": 0.4}
    directions = {"a/miou": "higher", "b/err": "lower"}
    # a: +(0.5-0.4)/0.4 = +25%; b: -(0.3-0.4)/0.4 = +25%; c would be ignored.
    assert delta_mtl(results, reference, directions) == pytest.approx(25.0)
    worse = {"a/miou": 0.3, "b/err": 0.6}
    assert delta_mtl(worse, reference, directions) == pytest.approx((-25.0 - 50.0) / 2)


def test_delta_mtl_reproduces_the_scripts_formula():
    miou, depth, normal = 0.2734, 0.7512, 29.5
    script = (
        (miou * 100 - 26.1113) / 26.1113
        - (depth - 0.771502) / 0.771502
        - (normal - 30.073763) / 30.073763
    ) / 3 * 100
    got = delta_mtl(
        {"semantic/miou": miou, "depth/abs_err": depth, "normal/mean": normal},
        {"semantic/miou": 26.1113, "depth/abs_err": 0.771502, "normal/mean": 30.073763},
        {"semantic/miou": "higher", "depth/abs_err": "lower", "normal/mean": "lower"},
        scale={"semantic/miou": 100.0},
    )
    assert got == pytest.approx(script, rel=1e-12)


def test_delta_mtl_errors_name_the_problem():
    ref = {"a": 1.0}
    with pytest.raises(KeyError, match="results lacks.*'a'"):
        delta_mtl({}, ref, {"a": "higher"})
    with pytest.raises(KeyError, match="reference lacks.*'b'"):
        delta_mtl({"a": 1.0, "b": 1.0}, ref, {"a": "higher", "b": "lower"})
    with pytest.raises(ValueError, match="'higher' or 'lower'"):
        delta_mtl(ref, ref, {"a": "up"})
    with pytest.raises(ValueError, match="empty"):
        delta_mtl(ref, ref, {})
    with pytest.raises(ValueError, match="is 0"):
        delta_mtl(ref, {"a": 0.0}, {"a": "higher"})
    with pytest.raises(ValueError, match="finite"):
        delta_mtl({"a": float("nan")}, ref, {"a": "higher"})
    with pytest.raises(KeyError, match="scale names.*'z'"):
        delta_mtl(ref, ref, {"a": "higher"}, scale={"z": 100.0})
