"""PASCAL-Context tasks: saliency and edge (logit heads, balanced BCE, mIoU/maxF and odsF),
and the normals L1 loss of MTL-PyTorch. Expected numbers are written out by hand."""

import math

import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.methods.supervised import masked_task_loss
from mtpsl_tf.metrics import EdgeMetrics, SaliencyMetrics
from mtpsl_tf.metrics.edge import EDGE_THRESHOLDS, disk_max_dynamic, disk_max_static
from mtpsl_tf.metrics.saliency import SALIENCY_THRESHOLDS, threshold_counts
from mtpsl_tf.tasks.all import TASKS
from mtpsl_tf.tasks.edge import Edge
from mtpsl_tf.tasks.normal import Normal
from mtpsl_tf.tasks.saliency import Saliency


def softplus(x):
    return math.log1p(math.exp(x))


def as_map(rows, dtype=np.float32):
    """Nested lists [B][H][W] -> [B, H, W, 1]."""
    return np.asarray(rows, dtype)[..., None]


# ------------------------------------------------------------------------------------ losses


def bce_case():
    """3 images of 1x4 / 1x2 pixels (padded with ignored pixels to 1x4).

    Image 0: logits (2, -1, 0, 3), labels (1, 0, -1, 0): bce = softplus(-2), softplus(-1), -,
             softplus(3). Image 1: all ignored. Image 2: logits (100, -100), labels (0, 1):
             bce = 100 each (the stable form, no overflow).
    """
    logits = as_map([[[2, -1, 0, 3]], [[5, 5, 5, 5]], [[100, -100, 7, 7]]])
    labels = as_map([[[1, 0, -1, 0]], [[-1, -1, -1, -1]], [[0, 1, -1, -1]]])
    pos0, neg0 = softplus(-2), softplus(-1) + softplus(3)
    return tf.constant(logits), tf.constant(labels), pos0, neg0


def test_edge_loss_fixed_pos_weight_hand_values():
    logits, labels, pos0, neg0 = bce_case()
    total, count = Edge().loss_terms(logits, labels)
    np.testing.assert_allclose(total.numpy(), [0.95 * pos0 + 0.05 * neg0, 0.0, 0.95 * 100 + 0.05 * 100],
                               rtol=1e-6)
    np.testing.assert_array_equal(count.numpy(), [3.0, 0.0, 2.0])
    per_image = Edge().per_image_loss(logits, labels).numpy()
    np.testing.assert_allclose(per_image, [(0.95 * pos0 + 0.05 * neg0) / 3, 0.0, 50.0], rtol=1e-6)
    custom = Edge(pos_weight=0.5).loss_terms(logits, labels)[0].numpy()
    np.testing.assert_allclose(custom[0], 0.5 * (pos0 + neg0), rtol=1e-6)


def test_saliency_loss_weight_from_each_image_hand_values():
    logits, labels, pos0, neg0 = bce_case()
    total, count = Saliency(weight_over="image").loss_terms(logits, labels)
    # Image 0: 2 negatives of 3 valid -> w = 2/3.  Image 2: 1 of 2 -> w = 1/2.
    np.testing.assert_allclose(total.numpy(), [2 / 3 * pos0 + 1 / 3 * neg0, 0.0, 100.0], rtol=1e-6)
    np.testing.assert_array_equal(count.numpy(), [3.0, 0.0, 2.0])


def test_saliency_one_sided_image_has_zero_loss():
    """Per-image weight: all-negative image -> w = 1, so only positives (none) count."""
    logits = tf.constant(as_map([[[3.0, -2.0]], [[3.0, -2.0]]]))
    labels = tf.constant(as_map([[[0, 0]], [[1, 1]]]))
    total, count = Saliency(weight_over="image").loss_terms(logits, labels)
    np.testing.assert_array_equal(total.numpy(), [0.0, 0.0])
    np.testing.assert_array_equal(count.numpy(), [2.0, 2.0])
    edge_total = Edge().loss_terms(logits, labels)[0].numpy()  # the fixed weight still counts
    np.testing.assert_allclose(edge_total, [0.05 * (softplus(3) + softplus(-2)),
                                            0.95 * (softplus(-3) + softplus(2))], rtol=1e-6)


def test_saliency_loss_weight_from_the_batch_hand_values():
    """Default (the reference): w over the batch's valid pixels, 3 negatives of 5 -> w = 3/5;
    image 2: bce 100 on its positive and on its negative pixel -> 3/5 * 100 + 2/5 * 100."""
    logits, labels, pos0, neg0 = bce_case()
    total, count = Saliency().loss_terms(logits, labels)
    np.testing.assert_allclose(total.numpy(), [3 / 5 * pos0 + 2 / 5 * neg0, 0.0, 100.0], rtol=1e-6)
    np.testing.assert_array_equal(count.numpy(), [3.0, 0.0, 2.0])
    # A one-sided image still learns when the batch is not one-sided.
    one_sided = Saliency().loss_terms(tf.constant(as_map([[[3.0, -2.0]], [[3.0, -2.0]]])),
                                      tf.constant(as_map([[[0, 0]], [[1, 1]]])))[0].numpy()
    np.testing.assert_allclose(one_sided, [0.5 * (softplus(3) + softplus(-2)),
                                           0.5 * (softplus(-3) + softplus(2))], rtol=1e-6)
    with pytest.raises(ValueError, match="weight_over"):
        Saliency(weight_over="pixel")


def test_saliency_batch_weight_matches_reference_on_a_batch():
    """sl's per-image reduction with the batch weight equals the reference's batch loss
    (BalancedCrossEntropyLoss(size_average=True) over B images, no void pixels)."""
    rng = np.random.default_rng(5)
    logits = rng.normal(scale=3, size=(3, 5, 6, 1))
    labels = (rng.uniform(size=(3, 5, 6, 1)) > rng.uniform(0.3, 0.9, size=(3, 1, 1, 1))).astype(np.float64)
    value = masked_task_loss(Saliency(), tf.constant(logits, tf.float32), tf.constant(labels, tf.float32),
                             tf.ones([3]), global_batch_size=3, reduction="per_image")
    np.testing.assert_allclose(float(value), reference_balanced_bce(logits, labels), rtol=1e-5)


def reference_balanced_bce(output, label, pos_weight=None):
    """MTL-PyTorch BalancedCrossEntropyLoss(size_average=True), no void pixels, in numpy."""
    labels = (label >= 0.5).astype(np.float64)
    w = (1.0 - labels).sum() / labels.size if pos_weight is None else pos_weight
    gt_zero = (output >= 0).astype(np.float64)
    loss_val = output * (labels - gt_zero) - np.log(1 + np.exp(output - 2 * output * gt_zero))
    loss_pos, loss_neg = -(labels * loss_val).sum(), -((1 - labels) * loss_val).sum()
    return (w * loss_pos + (1 - w) * loss_neg) / label.size


@pytest.mark.parametrize("task, pos_weight", [(Saliency(), None), (Edge(), 0.95)])
def test_losses_match_reference_formula_on_one_unpadded_image(task, pos_weight):
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=3, size=(1, 5, 6, 1))
    labels = (rng.uniform(size=(1, 5, 6, 1)) > 0.7).astype(np.float64)
    got = task.per_image_loss(tf.constant(logits, tf.float32), tf.constant(labels, tf.float32))
    np.testing.assert_allclose(float(got[0]), reference_balanced_bce(logits, labels, pos_weight), rtol=1e-5)


def test_edge_batch_reduction_pools_valid_pixels():
    logits, labels, pos0, neg0 = bce_case()
    value = masked_task_loss(Edge(), logits, labels, tf.ones([3]), global_batch_size=3, reduction="batch")
    np.testing.assert_allclose(float(value), (0.95 * pos0 + 0.05 * neg0 + 100.0) / 5, rtol=1e-6)


def test_binary_losses_have_finite_gradients_with_ignored_images():
    logits, labels, _, _ = bce_case()
    for task in (Saliency(), Edge()):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = tf.reduce_sum(task.per_image_loss(logits, labels))
        grad = tape.gradient(loss, logits).numpy()
        assert np.isfinite(grad).all()
        np.testing.assert_array_equal(grad[1], 0.0)  # the all-ignored image
        assert grad[0, 0, 2, 0] == 0.0  # an ignored pixel


def test_normal_l1_loss_hand_value():
    """Pixel 0: pred (2,0,0) -> (1,0,0) vs (0,1,0): |1| + |-1| = 2.
    Pixel 1: pred (0,3,4) -> (0,.6,.8) vs (0,0,1): .6 + .2 = .8.  Pixel 2: label all-zero.
    Total 2.8 over 2 valid pixels = 6 valid elements (the reference divides by elements)."""
    pred = np.array([[[[2, 0, 0], [0, 3, 4], [1, 1, 1]]], [[[1, 0, 0], [0, 0, 0], [0, 1, 0]]]], np.float32)
    label = np.array([[[[0, 1, 0], [0, 0, 1], [0, 0, 0]]], [[[0, 0, 0], [0, 0, 0], [0, 0, 0]]]], np.float32)
    task = Normal(name="normals", loss="l1")
    total, count = task.loss_terms(tf.constant(pred), tf.constant(label))
    np.testing.assert_allclose(total.numpy(), [2.8, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(count.numpy(), [6.0, 0.0])
    np.testing.assert_allclose(task.per_image_loss(pred, label).numpy(), [2.8 / 6, 0.0], rtol=1e-6)
    with tf.GradientTape() as tape:  # a zero prediction vector keeps the gradient finite
        p = tf.constant(pred)
        tape.watch(p)
        loss = tf.reduce_sum(task.per_image_loss(p, tf.constant(label)))
    assert np.isfinite(tape.gradient(loss, p).numpy()).all()


def test_normal_default_is_the_unchanged_cosine_loss():
    x, y, z = np.eye(3, dtype=np.float32)
    pred = np.stack([[x, y, z]])[:, None]
    label = np.stack([[x, np.zeros(3, np.float32), y]])[:, None]
    for task in (Normal(), Normal(loss="cosine")):
        assert task.loss == "cosine" and task.name == "normal"
        total, count = task.loss_terms(tf.constant(pred), tf.constant(label))
        np.testing.assert_allclose(total.numpy(), [1.0])  # count - dot = 2 - 1
        np.testing.assert_array_equal(count.numpy(), [2.0])
    with pytest.raises(ValueError, match="loss"):
        Normal(loss="l2")


# ------------------------------------------------------------------------- saliency metric


def test_saliency_metric_hand_case():
    """thresholds (0.25, 0.6), prob > t.
    Image 0: gt (1,1,0,0), prob (.95,.5,.3,.1): t=.25 -> tp 2 fp 1: J 2/3, P 2/3, R 1;
             t=.6 -> tp 1: J 1/2, P 1, R 1/2.
    Image 1: gt (0,0,-,-), prob (.1,.9,.99,.99): one false positive: J 0, P 0, R 0 at both.
    Image 2: all ignored -> skipped.
    Means: t=.25: J 1/3, P 1/3, R 1/2 -> F 0.4; t=.6: J 1/4, P 1/2, R 1/4 -> F 1/3."""
    gt = as_map([[[1, 1, 0, 0]], [[0, 0, -1, -1]], [[-1, -1, -1, -1]]])
    prob = as_map([[[0.95, 0.5, 0.3, 0.1]], [[0.1, 0.9, 0.99, 0.99]], [[0.9, 0.9, 0.9, 0.9]]])
    metric = SaliencyMetrics(thresholds=(0.25, 0.6))
    metric.update_state(gt, prob)
    assert int(metric.n_images) == 2
    result = {k: float(v) for k, v in metric.result().items()}
    assert result["miou"] == pytest.approx(1 / 3, rel=1e-9)
    assert result["maxF"] == pytest.approx(0.4, rel=1e-9)
    jaccard, precision, recall, _ = (t.numpy() for t in metric.per_threshold())
    np.testing.assert_allclose(jaccard, [1 / 3, 1 / 4])
    np.testing.assert_allclose(precision, [1 / 3, 1 / 2])
    np.testing.assert_allclose(recall, [1 / 2, 1 / 4])


def test_saliency_metric_perfect_empty_and_strict_threshold():
    gt = as_map([[[1, 0], [0, 1]], [[0, 0], [0, 0]]])
    metric = SaliencyMetrics()
    metric.update_state(gt, np.clip(gt, 0.05, 0.95))
    result = metric.result()
    assert float(result["miou"]) == 1.0  # an image with empty gt and prediction has J = 1
    assert float(result["maxF"]) == pytest.approx(0.5, rel=1e-9)  # ... but P = R = 0
    perfect = SaliencyMetrics()
    perfect.update_state(gt[:1], np.clip(gt[:1], 0.05, 0.95))
    assert float(perfect.result()["miou"]) == 1.0
    assert float(perfect.result()["maxF"]) == pytest.approx(1.0, abs=1e-9)
    strict = SaliencyMetrics(thresholds=(0.5,))
    strict.update_state(as_map([[[1]]]), as_map([[[0.5]]]))  # 0.5 is not > 0.5
    assert float(strict.result()["miou"]) == 0.0


def reference_saliency(gt, prob, thresholds):
    """MTL-PyTorch SaliencyMeter on unpadded images (numpy)."""
    jac, prec, rec = [], [], []
    for g, p in zip(gt.astype(bool), prob):
        row_j, row_p, row_r = [], [], []
        for t in thresholds:
            m = p > np.float32(t)
            tp, fp, fn = (m & g).sum(), (m & ~g).sum(), (~m & g).sum()
            row_j.append(1.0 if not g.any() and not m.any() else tp / (g | m).sum())
            row_p.append(tp / (tp + fp + 1e-12))
            row_r.append(tp / (tp + fn + 1e-12))
        jac.append(row_j), prec.append(row_p), rec.append(row_r)
    mp, mr = np.mean(prec, 0), np.mean(rec, 0)
    return np.max(np.mean(jac, 0)), np.max(2 * mp * mr / (mp + mr + 1e-12))


def test_saliency_metric_matches_reference_meter_and_streams():
    rng = np.random.default_rng(1)
    gt = (rng.uniform(size=(5, 6, 7, 1)) > 0.6).astype(np.float32)
    prob = np.clip(0.5 * gt + rng.uniform(size=gt.shape) * 0.7, 0, 1).astype(np.float32)
    metric = SaliencyMetrics()
    metric.update_state(gt[:2], prob[:2])
    metric.update_state(gt[2:], prob[2:])
    miou, max_f = reference_saliency(gt[..., 0], prob[..., 0], SALIENCY_THRESHOLDS)
    assert float(metric.result()["miou"]) == pytest.approx(miou, rel=1e-9)
    assert float(metric.result()["maxF"]) == pytest.approx(max_f, rel=1e-9)


def test_saliency_metric_nan_before_data_and_sample_weight():
    metric = SaliencyMetrics()
    assert all(math.isnan(float(v)) for v in metric.result().values())
    metric.update_state(as_map([[[-1, -1]]]), as_map([[[0.9, 0.9]]]))  # all ignored
    assert math.isnan(float(metric.result()["miou"]))
    metric.update_state(as_map([[[1, 0]], [[1, 0]]]), as_map([[[0.9, 0.1]], [[0.1, 0.9]]]),
                        sample_weight=[1.0, 0.0])
    assert int(metric.n_images) == 1 and float(metric.result()["miou"]) == 1.0


def test_threshold_counts_strict_and_inclusive():
    values = tf.constant([[0.1, 0.5, 0.7], [0.5, 0.9, 0.2]])
    mask = tf.constant([[True, True, True], [True, False, True]])
    np.testing.assert_array_equal(threshold_counts(values, mask, (0.2, 0.5), strict=False), [[2, 2], [2, 1]])
    np.testing.assert_array_equal(threshold_counts(values, mask, (0.2, 0.5), strict=True), [[2, 1], [1, 0]])


# ----------------------------------------------------------------------------- edge metric


def brute_disk_max(x, radius):
    out = np.full_like(x, -np.inf)
    height, width = x.shape[1:]
    reach = int(math.floor(radius))
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            if dy * dy + dx * dx > radius * radius:
                continue
            for i in range(max(0, -dy), min(height, height - dy)):
                for j in range(max(0, -dx), min(width, width - dx)):
                    out[:, i, j] = np.maximum(out[:, i, j], x[:, i + dy, j + dx])
    return out


@pytest.mark.parametrize("radius", [0.0, 1.0, 1.5, 2.3, 9.0])
def test_disk_max_static_and_dynamic_match_brute_force(radius):
    x = np.random.default_rng(0).uniform(size=(2, 7, 9)).astype(np.float32)
    expected = brute_disk_max(x, radius)
    np.testing.assert_array_equal(disk_max_static(tf.constant(x), radius).numpy(), expected)
    np.testing.assert_array_equal(
        disk_max_dynamic(tf.constant(x), tf.constant(radius, tf.float64)).numpy(), expected)


def odsf(metric, gt, prob, **kwargs):
    metric.update_state(np.asarray(gt, np.float32), np.asarray(prob, np.float32), **kwargs)
    return float(metric.result()["odsF"])


def point_case(size, gt_at, pred_at):
    gt = np.zeros((1, size, size, 1), np.float32)
    prob = np.zeros_like(gt)
    gt[0, gt_at[0], gt_at[1]] = 1
    prob[0, pred_at[0], pred_at[1]] = 0.8
    return gt, prob


def test_edge_perfect_prediction_gives_one():
    gt = np.zeros((2, 12, 12, 1), np.float32)
    gt[:, 4, :] = 1
    gt[1, 8:] = -1
    assert odsf(EdgeMetrics(), gt, np.where(gt > 0.5, 0.97, 0.02)) == 1.0


@pytest.mark.parametrize("radius, shift, expected", [
    (2.0, (0, 2), 1.0), (2.0, (0, 3), 0.0), (2.0, (1, 2), 0.0), (2.24, (1, 2), 1.0),  # sqrt(5)=2.236
])
def test_edge_tolerance_disk(radius, shift, expected):
    gt, prob = point_case(12, (5, 5), (5 + shift[0], 5 + shift[1]))
    assert odsf(EdgeMetrics(radius=radius), gt, prob) == expected


def test_edge_default_tolerance_is_fraction_of_diagonal():
    # 100 x 100: r = 0.0075 * 141.42 = 1.06 pixels.
    assert odsf(EdgeMetrics(), *point_case(100, (50, 50), (50, 51))) == 1.0
    assert odsf(EdgeMetrics(), *point_case(100, (50, 50), (51, 51))) == 0.0  # sqrt(2) > 1.06
    assert odsf(EdgeMetrics(max_dist=0.015), *point_case(100, (50, 50), (51, 51))) == 1.0


def test_edge_pooled_counts_hand_case():
    """10x10, gt = column 5 (10 pixels), radius 1. Prediction: rows 0-4 of column 5 at 0.9,
    rows 0-4 of column 9 at 0.5 (false positives).
    t <= 0.5: sumP 10, cntP 5 -> P .5; gt rows 0-5 have a prediction within 1 -> R .6; F = .6/1.1.
    0.5 < t <= 0.9: P 1, R .6 -> F .75 (= odsF).  t > 0.9: no prediction -> P 1, R 0, F 0.
    (Row 5 counts as recalled through row 4's prediction although row 4 is matched too: the
    many-to-one matching of this approximation; seism's one-to-one matching would give R .5.)"""
    gt = np.zeros((1, 10, 10, 1), np.float32)
    gt[0, :, 5] = 1
    prob = np.zeros_like(gt)
    prob[0, :5, 5] = 0.9
    prob[0, :5, 9] = 0.5
    metric = EdgeMetrics(radius=1.0)
    assert odsf(metric, gt, prob) == pytest.approx(0.75)
    f_values = metric.f_measure().numpy()
    thresholds = np.asarray(EDGE_THRESHOLDS)
    np.testing.assert_allclose(f_values[thresholds <= 0.5], 0.6 / 1.1)
    np.testing.assert_allclose(f_values[(thresholds > 0.5) & (thresholds <= 0.9)], 0.75)
    np.testing.assert_allclose(f_values[thresholds > 0.9], 0.0)
    precision, recall = (v.numpy() for v in metric.precision_recall())
    np.testing.assert_allclose(precision[thresholds > 0.9], 1.0)
    np.testing.assert_allclose(recall[thresholds > 0.9], 0.0)


def test_edge_ignored_pixels_and_images_are_left_out():
    gt = np.zeros((1, 6, 6, 1), np.float32)
    gt[0, :, 2] = 1
    gt[0, :, 3:] = -1  # ignored region right next to the edge
    prob = np.zeros_like(gt)
    prob[0, :, 3] = 0.9  # inside the ignored region: neither a prediction nor a match
    metric = EdgeMetrics(radius=1.0)
    assert odsf(metric, gt, prob) == 0.0
    assert int(metric.sum_p[0]) == 0 and int(metric.cnt_r[0]) == 0 and int(metric.sum_r) == 6
    # An all-ignored image adds nothing; only all-ignored data -> NaN.
    empty = EdgeMetrics()
    assert math.isnan(odsf(empty, -np.ones((1, 4, 4, 1)), np.ones((1, 4, 4, 1))))
    both = EdgeMetrics(radius=1.0)
    gt2, prob2 = point_case(6, (2, 2), (2, 2))
    assert odsf(both, np.concatenate([gt2, -np.ones_like(gt2)]), np.concatenate([prob2, np.ones_like(prob2)])) == 1.0
    weighted = EdgeMetrics(radius=1.0)
    assert odsf(weighted, np.concatenate([gt2, gt2]), np.concatenate([prob2, np.zeros_like(prob2)]),
                sample_weight=[1.0, 0.0]) == 1.0


def test_edge_no_ground_truth_follows_seism_special_cases():
    metric = EdgeMetrics()
    assert odsf(metric, np.zeros((1, 5, 5, 1)), np.full((1, 5, 5, 1), 0.3)) == 0.0
    precision, recall = (v.numpy() for v in metric.precision_recall())
    low = np.asarray(EDGE_THRESHOLDS) <= 0.3
    np.testing.assert_array_equal(recall[low], 1.0)  # no gt: R = 1, P = 0
    np.testing.assert_array_equal(precision[low], 0.0)
    np.testing.assert_array_equal(precision[~low], 1.0)  # and no prediction: R = 0, P = 1
    np.testing.assert_array_equal(recall[~low], 0.0)


def test_edge_metric_graph_modes_agree_and_stream():
    rng = np.random.default_rng(2)
    gt = (rng.uniform(size=(3, 16, 20, 1)) > 0.9).astype(np.float32)
    gt[2, 10:] = -1
    prob = np.clip(0.4 * gt + 0.8 * rng.uniform(size=gt.shape), 0, 1).astype(np.float32)
    eager = EdgeMetrics()
    eager.update_state(gt[:1], prob[:1])
    eager.update_state(gt[1:], prob[1:])
    results = {"eager": eager}
    for mode, kwargs in (("xla", {"jit_compile": True}),
                         ("dynamic", {"input_signature": [tf.TensorSpec([None, None, None, 1])] * 2})):
        metric = EdgeMetrics()
        tf.function(metric.update_state, **kwargs)(tf.constant(gt), tf.constant(prob))
        results[mode] = metric
    for metric in results.values():
        for name in ("sum_p", "cnt_p", "cnt_r", "sum_r", "n_valid"):
            np.testing.assert_array_equal(getattr(metric, name).numpy(), getattr(eager, name).numpy())
    assert 0.0 < float(eager.result()["odsF"]) < 1.0
    clone = EdgeMetrics.from_config(EdgeMetrics(max_dist=0.01, radius=3.0).get_config())
    assert clone.max_dist == 0.01 and clone.radius == 3.0 and clone.thresholds == EDGE_THRESHOLDS


def test_metric_argument_checks():
    with pytest.raises(ValueError, match="thresholds"):
        SaliencyMetrics(thresholds=(0.5, 0.2))
    with pytest.raises(ValueError, match="max_dist"):
        EdgeMetrics(max_dist=-1.0)
    with pytest.raises(ValueError, match="pos_weight"):
        Edge(pos_weight=1.5)
    with pytest.raises(ValueError, match="shape"):
        EdgeMetrics().update_state(np.zeros((1, 4, 4, 3)), np.zeros((1, 4, 4, 3)))


# ---------------------------------------------------------------------------------- tasks


def test_registry_and_head_specs():
    assert {"saliency", "edge"} <= set(TASKS.names())
    sal, edge = TASKS.get("saliency")(name="sal"), TASKS.get("edge")(name="edge", pos_weight=0.95)
    assert Saliency().name == "sal" and Edge().name == "edge"
    for task in (sal, edge):
        assert task.head_spec == {"channels": 1, "activation": "linear"}
        assert set(task.metric_directions) >= {task.primary_metric}
    assert (sal.primary_metric, edge.primary_metric) == ("miou", "odsF")
    assert set(sal.metric_directions) == {"miou", "maxF"}
    assert sal.label_signature(None, None) == tf.TensorSpec([None, None, 1], tf.float32)


@pytest.mark.parametrize("task", [Saliency(), Edge()], ids=["sal", "edge"])
def test_update_metric_applies_sigmoid_to_logits(task):
    gt = np.zeros((1, 8, 8, 1), np.float32)
    gt[0, 2:5, 3] = 1
    logits = np.where(gt > 0.5, 6.0, -6.0).astype(np.float32)
    metric = task.make_metric()
    task.update_metric(metric, tf.constant(gt), tf.constant(logits))
    assert float(metric.result()[task.primary_metric]) == pytest.approx(1.0)


@pytest.mark.parametrize("task", [Saliency(), Edge()], ids=["sal", "edge"])
@pytest.mark.parametrize("label, match", [
    (np.zeros((2, 3)), "shape"), (np.zeros((2, 3, 2)), "shape"),
    (np.full((2, 3, 1), 2.0), "values"), (np.full((2, 3, 1), 0.5), "values"),
    (np.full((2, 3, 1), np.nan), "values"),
])
def test_binary_check_label(task, label, match):
    with pytest.raises(ValueError, match=match) as info:
        task.check_label(label.astype(np.float32), "val/image 3")
    assert "val/image 3" in str(info.value)
    task.check_label(np.array([[[-1.0], [0.0], [1.0]]], np.float32), "ok")


@pytest.mark.parametrize("task", [Saliency(), Edge()], ids=["sal", "edge"])
def test_binary_visualise(task):
    label = tf.constant(as_map([[[1, 0, -1]], [[0, 0, 0]]]))
    image = task.visualise(label).numpy()
    assert image.shape == (2, 1, 3, 3) and image.dtype == np.float32
    np.testing.assert_array_equal(image[0, 0, 0], 1.0)
    np.testing.assert_array_equal(image[0, 0, 1], 0.0)
    assert len(set(image[0, 0, 2])) > 1  # ignored: a colour, not grey
    logits = tf.constant(np.random.default_rng(0).normal(size=(2, 4, 5, 1)), tf.float32)
    shown = task.visualise(logits).numpy()
    assert shown.shape == (2, 4, 5, 3) and 0.0 <= shown.min() and shown.max() <= 1.0
    np.testing.assert_allclose(shown[..., 0], tf.sigmoid(logits).numpy()[..., 0], rtol=1e-6)
