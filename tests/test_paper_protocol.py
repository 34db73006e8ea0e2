"""The `paper` evaluation protocol: predictions resized back to each test image's original size
and scored as Multi-Task-Learning-PyTorch's final evaluation, on a fake PASCAL_MT release with a
tiny resnet18_aspp; the resize rules against OpenCV; the default (streaming) scorer."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mtpsl_tf.data import pipeline
from mtpsl_tf.metrics import boundary, resize
from mtpsl_tf.metrics.original_size import SALIENCY_THRESHOLDS
from test_pascal_pipeline import SIZES, TRAIN_IDS, VAL_IDS, same_name_builder, write_fake_release

FLAGS = ["--dataset=pascal_context", "--backbone=resnet18_aspp", "--filters=4,4,8,8,8", "--height=64",
         "--width=64", "--setting=full", "--method=sl", "--batch_size=2", "--eval_batch_size=2",
         "--verbose=0"]


@pytest.mark.parametrize("shape, size", [((64, 64, 3), (40, 48)), ((64, 64), (38, 56)), ((7, 5, 2), (13, 3))])
def test_resize_rules_match_opencv(shape, size):
    x = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
    np.testing.assert_allclose(resize.bilinear(x, *size), cv2.resize(x, size[::-1], interpolation=cv2.INTER_LINEAR),
                               atol=1e-3)
    np.testing.assert_array_equal(resize.nearest(x, *size), cv2.resize(x, size[::-1], interpolation=cv2.INTER_NEAREST))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A prepared fake PASCAL-Context (2 test images of their own sizes) and a model directory
    with a tiny resnet18_aspp (random weights)."""
    from mtpsl_tf.flags import config_from_flagfile
    from mtpsl_tf.training.restore import dataset_tasks, write_model_dir
    from mtpsl_tf.training.run import build_network

    root = tmp_path_factory.mktemp("paper_protocol")
    write_fake_release(root / "manual")
    cls = same_name_builder({"train": len(TRAIN_IDS), "val": len(VAL_IDS)})
    cls(data_dir=str(root / "data")).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(root / "manual")))
    flagfile = root / "tiny.flags"
    flagfile.write_text("\n".join(FLAGS) + "\n")
    config = config_from_flagfile(str(flagfile), [f"--model_dir={root / 'run'}", f"--data_dir={root / 'data'}"])
    config = config.validate()
    tf.keras.utils.set_random_seed(0)
    network = build_network(config, dataset_tasks(config), 64, 64, load_pretrained=False)
    write_model_dir(str(root / "run"), config, network)
    return root / "run"


def _reference_metrics(model_dir):
    """MTL-PyTorch's save_model_predictions + eval_*.py transcribed with OpenCV, per image."""
    from mtpsl_tf.config import load_config
    from mtpsl_tf.training.restore import load_network

    restored = load_network(str(model_dir), "latest", 64, 64)
    bundle = pipeline.load(load_config(str(model_dir / "config.json")).data)
    seg = {"semseg": np.zeros((3, 21)), "human_parts": np.zeros((3, 7))}
    sal, angles, edge_probs, edge_labels, sizes = [], [], [], [], []
    for example in pipeline.original_size_test_dataset(bundle):
        out = {k: v[0].numpy() for k, v in restored.network(example["image"][None], training=False).items()}
        labels = {k: v.numpy() for k, v in example["original_labels"].items()}
        height, width = labels["semseg"].shape
        sizes.append((height, width))
        for task, k in (("semseg", 21), ("human_parts", 7)):
            gt = labels[task]
            if task == "human_parts" and np.unique(gt).size == 1 and np.unique(gt)[0] in (0, -1):
                continue
            pred = cv2.resize(np.argmax(out[task], -1).astype(np.float32), (width, height),
                              interpolation=cv2.INTER_NEAREST)
            valid = gt >= 0
            for c in range(k):
                seg[task][:, c] += [np.sum((gt == c) & (pred == c) & valid), np.sum((gt != c) & (pred == c) & valid),
                                    np.sum((gt == c) & (pred != c) & valid)]
        normal = out["normals"] / np.linalg.norm(out["normals"], axis=-1, keepdims=True)
        png = cv2.resize((normal + 1) * 255 / 2, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.uint8)
        pred = 2.0 * png / 255.0 - 1
        pred = pred / (np.linalg.norm(pred, axis=2)[..., None] + 1e-12)
        gt = labels["normals"].astype(np.float64)
        valid = np.linalg.norm(gt, axis=2) != 0
        gt = gt / (np.linalg.norm(gt, axis=2)[..., None] + 1e-12)
        angles.extend(np.rad2deg(np.arccos(np.clip(np.sum(pred * gt, axis=2), -1, 1)))[valid])
        for task in ("sal", "edge"):
            png = cv2.resize(255 / (1 + np.exp(-out[task][..., 0])), (width, height),
                             interpolation=cv2.INTER_LINEAR).astype(np.uint8) / 255.0
            gt = labels[task][..., 0]
            if task == "edge":
                edge_probs.append(png)
                edge_labels.append(gt)
                continue
            row = []
            for t in SALIENCY_THRESHOLDS:
                mask, g = png > t, gt > 0.5
                jac = 1.0 if (not g.any() and not mask.any()) else np.sum(g & mask) / np.sum(g | mask)
                tp = np.sum(mask & g)
                row.append([jac, tp / (np.sum(mask) + 1e-12), tp / (np.sum(g) + 1e-12)])
            sal.append(row)
    sal = np.mean(np.array(sal), axis=0)
    f = 2 * sal[:, 1] * sal[:, 2] / (sal[:, 1] + sal[:, 2] + 1e-12)
    miou = {task: np.mean(c[0] / np.maximum(c.sum(0), 1e-8)) for task, c in seg.items()}
    angles = np.array(angles)
    return sizes, {
        "semseg/miou": miou["semseg"], "human_parts/miou": miou["human_parts"],
        "normals/mean": angles.mean(), "normals/within_11.25": 100 * np.mean(angles < 11.25),
        "normals/rmse": np.sqrt(np.mean(angles ** 2)), "normals/median": np.median(angles),
        "sal/miou": sal[:, 0].max(), "sal/maxF": f.max(),
        "edge/odsF": boundary.ods_f(edge_probs, edge_labels)["odsF"]}


def test_paper_protocol_scores_all_tasks_at_original_sizes(model_dir):
    from mtpsl_tf.evaluate import evaluate_model_dir, format_report

    report = evaluate_model_dir(str(model_dir), "latest", protocol="paper", workers=1)
    assert report["protocol"] == "paper"
    sizes, expected = _reference_metrics(model_dir)
    assert sorted(sizes) == sorted(SIZES[len(TRAIN_IDS):len(TRAIN_IDS) + len(VAL_IDS)])  # not 64 x 64
    for key, value in expected.items():
        # The median comes from 0.005-degree bins; np.median averages the two middle angles of an
        # even count, which on these few pixels lie up to a few bins apart.
        tol = 0.05 if key == "normals/median" else 1e-6
        assert report["metrics"][key] == pytest.approx(value, abs=tol), key
    assert report["metric_protocol"]["semseg/miou"] == "exact"
    assert report["metric_protocol"]["normals/median"].startswith("approximate")
    assert "thinned" in report["metric_protocol"]["edge/odsF"]
    written = json.loads((model_dir / "eval_metrics_paper.json").read_text())
    assert written["metrics"] == report["metrics"] and written["protocol"] == "paper"
    assert "protocol paper" in format_report(report)
    training = evaluate_model_dir(str(model_dir), "latest")
    assert training["protocol"] == "training" and (model_dir / "eval_metrics.json").exists()
    assert set(training["metrics"]) >= set(expected)


def test_default_scorer_is_the_streaming_metric_at_equal_size():
    from mtpsl_tf.tasks.depth import Depth

    task = Depth()
    rng = np.random.default_rng(0)
    label, output = rng.uniform(1, 5, (2, 6, 8, 1)), rng.uniform(1, 5, (2, 6, 8, 1))
    scorer = task.paper_scorer()
    for i in range(2):
        scorer.update(label[i], output[i])
    metric = task.make_metric()
    task.update_metric(metric, tf.constant(label, tf.float32), tf.constant(output, tf.float32))
    expected = {k: float(v) for k, v in metric.result().items()}
    assert scorer.result() == pytest.approx(expected, rel=1e-6)


def test_bad_protocol_and_workers_are_refused(model_dir):
    from mtpsl_tf.evaluate import main

    assert main([f"--model_dir={model_dir}", "--which=latest", "--workers=0", "--protocol=paper"]) == 2
    with pytest.raises(SystemExit):
        main([f"--model_dir={model_dir}", "--protocol=fast"])
