"""Scorers of the `paper` evaluation protocol: one image at a time, the network's output (at the
network's size) is turned into the saved prediction of Multi-Task-Learning-PyTorch's
`save_model_predictions` (get_output, cv2.resize back to the image's ORIGINAL size with the
task's INFER_FLAGVALS, 8-bit PNG) and scored against the original-size label as their
`evaluation/eval_*.py`. Each scorer says per metric whether it is exact (`protocol`).

Interface: `update(label, output)` with numpy `label [H, W, ...]` (original size, the data
contract's values) and `output [h, w, C]` (the network's raw output for that image);
`result() -> {metric: float}`; `protocol -> {metric: "exact" | "approximate: why"}`.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from mtpsl_tf.metrics import resize
from mtpsl_tf.metrics.boundary import DEFAULT_MAX_DIST, dataset_counts, precision_recall, seism_thresholds

EXACT = "exact"
SALIENCY_THRESHOLDS = np.linspace(0.2, 0.9, 15)  # eval_sal_predictions' mask_thres


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


def png_probability(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """float64 `[H, W]`: 255 * sigmoid(logit), bilinear to (height, width), truncated to uint8
    (`astype(np.uint8)`), read back / 255: what eval_sal / seism read from the saved PNG."""
    scaled = resize.bilinear(255.0 * sigmoid(np.squeeze(logits, -1)), height, width)
    return np.clip(scaled, 0, 255).astype(np.uint8) / 255.0


class SegmentationScorer:
    """eval_semseg / eval_human_parts: class map = argmax at the network's size, nearest resize,
    per-class tp / fp / fn over valid (label >= 0) pixels summed over the dataset,
    IoU_c = tp / max(tp + fp + fn, 1e-8) and mIoU = mean over ALL classes (an absent class
    counts 0, unlike the training metric). `skip_uniform`: eval_human_parts skips an image whose
    label is one value that is ignore or 0 (no part annotated)."""

    def __init__(self, num_classes: int, skip_uniform: bool = False):
        self.num_classes = num_classes
        self.skip_uniform = skip_uniform
        self.counts = np.zeros((3, num_classes), np.int64)
        self.images = 0
        self.protocol = {"miou": EXACT}

    def update(self, label, output):
        label = np.asarray(label)
        values = np.unique(label)
        if self.skip_uniform and values.size == 1 and values[0] <= 0:
            return
        pred = resize.nearest(np.argmax(output, axis=-1), *label.shape[:2])
        k = self.num_classes
        valid = (label >= 0) & (label < k)
        confusion = np.bincount(label[valid].astype(np.int64) * k + pred[valid], minlength=k * k).reshape(k, k)
        tp = np.diag(confusion)
        self.counts += np.stack([tp, confusion.sum(0) - tp, confusion.sum(1) - tp])
        self.images += 1

    def result(self) -> Dict[str, float]:
        tp, fp, fn = self.counts
        iou = tp / np.maximum(tp + fp + fn, 1e-8)
        return {"miou": float(iou.mean()) if self.images else float("nan")}


class NormalScorer:
    """eval_normals: prediction L2-normalised, (n + 1) * 255 / 2, bilinear resize, truncated to
    uint8 (the saved PNG), read back as 2 x / 255 - 1 and re-normalised (+1e-12); angles over the
    label's valid pixels (non-zero vectors, re-normalised); images with no valid pixel are
    skipped. mean, rmse and the within-11.25/22.5/30 percentages are exact; the median comes from
    a 0.005-degree histogram (the reference keeps every angle)."""

    BIN = 0.005

    def __init__(self):
        self.histogram = np.zeros(int(round(180.0 / self.BIN)) + 1, np.int64)
        self.sums = np.zeros(2)  # sum of angles, of squared angles
        self.within = np.zeros(3, np.int64)
        self.protocol = {m: EXACT for m in ("mean", "rmse", "within_11.25", "within_22.5", "within_30")}
        self.protocol["median"] = f"approximate: from a {self.BIN}-degree histogram"

    @staticmethod
    def _normalise(x):
        return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-12)

    def update(self, label, output):
        label = np.asarray(label, np.float64)
        valid = np.linalg.norm(label, axis=-1) != 0
        if not valid.any():
            return
        unit = output / np.maximum(np.linalg.norm(output, axis=-1, keepdims=True), 1e-12)
        png = np.clip(resize.bilinear((unit + 1.0) * 255.0 / 2.0, *label.shape[:2]), 0, 255).astype(np.uint8)
        pred = self._normalise(2.0 * png.astype(np.float64) / 255.0 - 1.0)
        cosine = np.clip(np.sum(pred * self._normalise(label), axis=-1)[valid], -1, 1)
        angles = np.rad2deg(np.arccos(cosine))
        self.sums += [angles.sum(), (angles ** 2).sum()]
        self.within += [(angles < t).sum() for t in (11.25, 22.5, 30.0)]
        np.add.at(self.histogram, np.minimum((angles / self.BIN).astype(np.int64), self.histogram.size - 1), 1)

    def result(self) -> Dict[str, float]:
        n = self.histogram.sum()
        if n == 0:
            return {m: float("nan") for m in self.protocol}
        cumulative = np.cumsum(self.histogram)
        median_bin = int(np.searchsorted(cumulative, (n + 1) / 2.0))
        return {"mean": self.sums[0] / n, "median": (median_bin + 0.5) * self.BIN,
                "rmse": float(np.sqrt(self.sums[1] / n)), "within_11.25": 100.0 * self.within[0] / n,
                "within_22.5": 100.0 * self.within[1] / n, "within_30": 100.0 * self.within[2] / n}


class SaliencyScorer:
    """eval_sal: the PNG probability (`png_probability`) binarised as `> t` for the 15 thresholds
    0.2..0.9; per image Jaccard (1 when label and prediction are both empty), precision
    tp / (tp + fp + 1e-12), recall tp / (tp + fn + 1e-12) over non-void pixels (label -1 = void,
    as jaccard.py's void_pixels); averaged over images; mIoU = max_t mean Jaccard, maxF = max_t
    2PR / (P + R + 1e-12) of the mean P, R."""

    def __init__(self):
        self.sums = np.zeros((3, SALIENCY_THRESHOLDS.size))
        self.images = 0
        self.protocol = {"miou": EXACT, "maxF": EXACT}

    def update(self, label, output):
        label = np.squeeze(np.asarray(label), -1)
        prob = png_probability(output, *label.shape)
        valid = label >= 0
        gt = valid & (label >= 0.5)
        pred = (prob[None] > SALIENCY_THRESHOLDS[:, None, None]) & valid[None]
        tp = (pred & gt[None]).sum(axis=(1, 2)).astype(np.float64)
        predicted = pred.sum(axis=(1, 2))
        positives = gt.sum()
        union = positives + predicted - tp
        jaccard = np.where((positives == 0) & (predicted == 0), 1.0, tp / np.maximum(union, 1))
        self.sums += [jaccard, tp / (predicted + 1e-12), tp / (positives + 1e-12)]
        self.images += 1

    def result(self) -> Dict[str, float]:
        if not self.images:
            return {"miou": float("nan"), "maxF": float("nan")}
        jaccard, precision, recall = self.sums / self.images
        f_measure = 2 * precision * recall / (precision + recall + 1e-12)
        return {"miou": float(jaccard.max()), "maxF": float(f_measure.max())}


class EdgeScorer:
    """seism's odsF (`boundary.ods_f` rules) of the PNG probabilities (`png_probability`) against
    the original-size labels, counted in chunks of `chunk` images over `workers` processes so
    that the maps are never all held in memory."""

    def __init__(self, max_dist: float = DEFAULT_MAX_DIST, workers: int = 1, chunk: int = 64,
                 progress: bool = False):
        self.max_dist = max_dist
        self.workers = workers
        self.chunk = chunk
        self.progress = progress
        self.thresholds = seism_thresholds()
        self.counts = np.zeros((self.thresholds.size, 4), np.int64)
        self.pending = []
        self.protocol = {"odsF": ("exact matching rules (thinning, one-to-one matching within "
                                  f"{max_dist} x diagonal, dataset sums); ground truth: the dataset's "
                                  "edge label, thinned (seism derives it from the LabelMap)")}

    def update(self, label, output):
        label = np.squeeze(np.asarray(label), -1)
        self.pending.append((png_probability(output, *label.shape), label))
        if len(self.pending) >= self.chunk:
            self._flush()

    def _flush(self):
        if self.pending:
            probs, labels = zip(*self.pending)
            self.counts += dataset_counts(probs, labels, self.thresholds, self.max_dist,
                                          workers=self.workers, progress=self.progress)
            self.pending = []

    def result(self) -> Dict[str, float]:
        self._flush()
        precision, recall = precision_recall(self.counts)
        total = precision + recall
        f_measure = np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1.0), 0.0)
        return {"odsF": float(f_measure.max())}


class StreamingScorer:
    """Default for tasks without a protocol of their own: the output is resized bilinearly to
    the label's size (a no-op when the sizes agree, e.g. NYU-v2, Cityscapes) and fed to the
    task's streaming metric, one image at a time."""

    def __init__(self, task):
        self.task = task
        self.metric = task.make_metric()
        self.protocol = {m: "as the training protocol, at the original size" for m in task.metric_directions}

    def update(self, label, output):
        label = np.asarray(label)
        if output.shape[:2] != label.shape[:2]:
            output = resize.bilinear(output, *label.shape[:2])
        self.task.update_metric(self.metric, label[None], np.asarray(output, np.float32)[None])

    def result(self) -> Dict[str, float]:
        return {k: float(v) for k, v in self.metric.result().items()}
