"""Edge odsF as the published protocol (seism / Piotr Dollar's `edgesEvalImg` / BSDS
`correspondPixels`), in numpy at each image's own size.

Per image and threshold t of 0.01, 0.02, ..., 0.99 (seism's parameters as MTL-PyTorch writes them):
1. binarise `prob >= max(eps, t)` and thin the binary map to one-pixel-wide lines (BSDS
   `bwmorph(.., 'thin', Inf)`, Guo-Hall; `mtpsl_tf.metrics.thinning`);
2. match predicted to ground-truth boundary pixels ONE-TO-ONE, a pair being allowed when their
   Euclidean distance is <= max_dist * sqrt(H^2 + W^2) (correspondPixels' test `d^2 <= r^2`).
   correspondPixels solves a min-cost assignment in which each unmatched pixel costs 100 x r
   and a match costs its distance, so it maximises the number of matches first; we compute
   that maximum number directly (Hopcroft-Karp, `scipy.sparse.csgraph.maximum_bipartite_matching`)
   on the sparse graph of allowed pairs. It differs from correspondPixels only where a
   smaller matching would be cheaper in distance by more than 200 r, i.e. never in practice;
   the tests compare with PyPI `pyedgeeval` (BSDS' C++ code) on crafted cases.
3. cntP = matched predicted pixels, sumP = predicted pixels, cntR = matched ground-truth pixels
   (= cntP with one ground truth), sumR = ground-truth pixels.
The counts are SUMMED OVER THE DATASET per threshold; P, R, F follow seism's `gather_measure`
special cases and odsF = max over thresholds (`general_ods`).

Ground truth: label == 1 pixels, thinned as `edgesEvalImg` thins its ground-truth boundaries
(`thin_labels`). Ignore (label -1, e.g. padding; seism's PASCAL-Context ground truth has none,
its boundaries come from the full LabelMap): ignored pixels are removed from BOTH maps before
thinning: their probability is treated as 0 and they are never ground truth, so a prediction
there is neither counted nor matched (our choice, documented in docs/EVALUATION.md).
"""

from __future__ import annotations

import math
import multiprocessing
import sys
from typing import Dict, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from mtpsl_tf.metrics.thinning import thin

DEFAULT_MAX_DIST = 0.0075  # seism's maxDist for 'PASCALContext' (x image diagonal)


def seism_thresholds(num_thresholds: int = 99) -> np.ndarray:
    """float64 `[K]`: 1/(K+1), ..., K/(K+1) rounded to 2 decimals for K = 99 (0.01..0.99, the
    parameter file MTL-PyTorch writes); for other K the evenly spaced `edgesEvalImg` values."""
    if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, int) or num_thresholds < 1:
        raise ValueError(f"ods_f: num_thresholds must be an integer >= 1, got {num_thresholds!r}")
    values = np.arange(1, num_thresholds + 1, dtype=np.float64) / (num_thresholds + 1)
    return np.round(values, 2) if num_thresholds == 99 else values


def disk_offsets(radius: float) -> np.ndarray:
    """int `[N, 2]`: the (dy, dx) with dy^2 + dx^2 <= radius^2."""
    reach = int(math.floor(radius))
    dy, dx = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    inside = (dy * dy + dx * dx) <= radius * radius
    return np.stack([dy[inside], dx[inside]], axis=1)


class _Candidates:
    """For every pixel of an image, the ground-truth pixels within the matching radius, as one
    CSR matrix `[H*W, n_gt]` (built once per image, sliced per threshold)."""

    def __init__(self, gt: np.ndarray, radius: float):
        from scipy import sparse

        height, width = gt.shape
        gy, gx = np.nonzero(gt)
        self.n_gt = gy.size
        rows, cols = [], []
        ids = np.arange(self.n_gt)
        for dy, dx in disk_offsets(radius):
            # A pixel at (gy - dy, gx - dx) has ground-truth pixel i at offset (dy, dx).
            y, x = gy - dy, gx - dx
            inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
            rows.append(y[inside] * width + x[inside])
            cols.append(ids[inside])
        rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        self.graph = sparse.csr_matrix(
            (np.ones(rows.size, np.int8), (rows, cols)), shape=(height * width, max(self.n_gt, 1)))
        self.near = np.zeros(height * width, bool)
        self.near[rows] = True

    def matched(self, predicted: np.ndarray) -> int:
        """Size of a maximum one-to-one matching between the predicted pixels (flat indices)
        and the ground-truth pixels."""
        from scipy.sparse.csgraph import maximum_bipartite_matching

        rows = predicted[self.near[predicted]]
        if rows.size == 0 or self.n_gt == 0:
            return 0
        sub = self.graph[rows]
        match = maximum_bipartite_matching(sub, perm_type="column")
        return int(np.count_nonzero(match >= 0))


def image_counts(prob: np.ndarray, label: np.ndarray, thresholds: Sequence[float],
                 max_dist: float = DEFAULT_MAX_DIST, thin_labels: bool = True) -> np.ndarray:
    """int64 `[K, 4]`: (cntR, sumR, cntP, sumP) of one image at each threshold.

    Args:
        prob: float `[H, W]` (or `[H, W, 1]`) edge probabilities in [0, 1].
        label: `[H, W]` (or `[H, W, 1]`): 1 edge, 0 background, -1 (any negative) ignore.
        thresholds: K binarisation thresholds (`prob >= max(eps, t)`).
        max_dist: matching tolerance as a fraction of the image diagonal.
        thin_labels: thin the ground-truth map first, as `edgesEvalImg` does.
    """
    prob, label = _check_pair(prob, label)
    valid = label >= 0
    gt = valid & (label >= 0.5)
    if thin_labels:
        gt = thin(gt)
    prob = np.where(valid, prob, 0.0)
    radius = max_dist * math.hypot(*prob.shape)
    candidates = _Candidates(gt, radius)
    sum_r = int(np.count_nonzero(gt))
    counts = np.zeros((len(thresholds), 4), np.int64)
    previous: Tuple[bytes, np.ndarray] = (b"", np.zeros(4, np.int64))
    for k, t in enumerate(thresholds):
        binary = prob >= max(np.finfo(np.float64).eps, float(t))
        # Quantised maps (8-bit PNGs) give the same binary map at many thresholds.
        key = np.packbits(binary).tobytes()
        if key == previous[0]:
            counts[k] = previous[1]
            continue
        predicted = np.flatnonzero(thin(binary))
        matched = candidates.matched(predicted)
        counts[k] = (matched, sum_r, matched, predicted.size)
        previous = (key, counts[k].copy())
    return counts


def _check_pair(prob, label) -> Tuple[np.ndarray, np.ndarray]:
    prob = np.asarray(prob, np.float64)
    label = np.asarray(label, np.float64)
    prob = prob[..., 0] if prob.ndim == 3 and prob.shape[-1] == 1 else prob
    label = label[..., 0] if label.ndim == 3 and label.shape[-1] == 1 else label
    if prob.ndim != 2 or prob.shape != label.shape:
        raise ValueError(f"ods_f: each probability map and its label must be [H, W] (or [H, W, 1]) of the "
                         f"same size, got {prob.shape} and {label.shape}")
    if not np.all(np.isfinite(prob)):
        raise ValueError("ods_f: probabilities must be finite")
    return prob, label


def precision_recall(counts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """float64 `[K]` (precision, recall) from dataset-summed `[K, 4]` counts, with seism's
    `gather_measure` special cases (no ground truth: R = 1, P = 0; no prediction: R = 0, P = 1;
    later cases overwrite earlier ones)."""
    cnt_r, sum_r, cnt_p, sum_p = (counts[:, i].astype(np.float64) for i in range(4))
    recall = np.where((sum_r == 0) & (cnt_p == 0), 1.0, 0.0)
    precision = np.zeros_like(recall)
    no_pred = (sum_p == 0) & (cnt_r == 0)
    recall = np.where(no_pred, 0.0, recall)
    precision = np.where(no_pred, 1.0, precision)
    regular = (sum_p != 0) & (cnt_r != 0)
    recall = np.where(regular, cnt_r / np.maximum(sum_r, 1), recall)
    precision = np.where(regular, cnt_p / np.maximum(sum_p, 1), precision)
    return precision, recall


def _image_job(args):
    prob, label, thresholds, max_dist, thin_labels = args
    return image_counts(prob, label, thresholds, max_dist, thin_labels)


def dataset_counts(probabilities: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                   thresholds: Sequence[float], max_dist: float = DEFAULT_MAX_DIST,
                   thin_labels: bool = True, workers: int = 1, progress: bool = False) -> np.ndarray:
    """int64 `[K, 4]`: `image_counts` summed over the images (in `workers` processes)."""
    if len(probabilities) != len(labels):
        raise ValueError(f"ods_f: {len(probabilities)} probability maps but {len(labels)} labels")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"ods_f: workers must be an integer >= 1, got {workers!r}")
    total = np.zeros((len(thresholds), 4), np.int64)
    jobs = ((p, l, tuple(thresholds), max_dist, thin_labels) for p, l in zip(probabilities, labels))
    n = len(labels)
    if workers == 1 or n < 2:
        results = map(_image_job, jobs)
        pool = None
    else:
        # spawn: the caller may hold TensorFlow threads, which fork would copy half-initialised.
        pool = multiprocessing.get_context("spawn").Pool(min(workers, n))
        results = pool.imap(_image_job, jobs, chunksize=1)
    try:
        for counts in tqdm(results, total=n, desc="edge odsF", unit="image", disable=not progress,
                           file=sys.stderr):
            total += counts
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return total


def ods_f(probabilities: Sequence[np.ndarray], labels: Sequence[np.ndarray],
          max_dist: float = DEFAULT_MAX_DIST, num_thresholds: int = 99, workers: int = 1,
          progress: bool = False, thin_labels: bool = True) -> Dict[str, object]:
    """Optimal-dataset-scale F-measure of edge probabilities, as seism (module docstring).

    Args:
        probabilities: per-image float arrays `[H_i, W_i]` (or `[H_i, W_i, 1]`) in [0, 1], each
            at its image's own size.
        labels: matching arrays: 1 edge, 0 background, -1 ignore.
        max_dist: tolerance as a fraction of each image's diagonal (seism: 0.0075).
        num_thresholds: K (99: 0.01, ..., 0.99).
        workers: processes scoring images in parallel (1: in this process).
        progress: show a progress bar (tqdm, stderr).
        thin_labels: thin the ground truth first (edgesEvalImg does).

    Returns:
        `{"odsF", "threshold", "precision", "recall"}` (fractions; the threshold of the best F,
        the first on ties as MATLAB's max) plus per-threshold lists `"thresholds"`, `"f"`,
        `"precisions"`, `"recalls"` and the summed `"counts"` (cntR, sumR, cntP, sumP).

    Raises:
        ValueError for mismatched lists or shapes, non-finite probabilities, bad arguments.
    """
    if isinstance(max_dist, bool) or not isinstance(max_dist, (int, float)) or not (
            math.isfinite(max_dist) and max_dist > 0):
        raise ValueError(f"ods_f: max_dist must be a finite number > 0, got {max_dist!r}")
    if len(probabilities) != len(labels):
        raise ValueError(f"ods_f: {len(probabilities)} probability maps but {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("ods_f: no image to score")
    thresholds = seism_thresholds(num_thresholds)
    counts = dataset_counts(probabilities, labels, thresholds, float(max_dist), thin_labels, workers,
                            progress)
    precision, recall = precision_recall(counts)
    total = precision + recall
    f_measure = np.where(total > 0, 2.0 * precision * recall / np.where(total > 0, total, 1.0), 0.0)
    best = int(np.argmax(f_measure))
    return {"odsF": float(f_measure[best]), "threshold": float(thresholds[best]),
            "precision": float(precision[best]), "recall": float(recall[best]),
            "thresholds": thresholds.tolist(), "f": f_measure.tolist(),
            "precisions": precision.tolist(), "recalls": recall.tolist(),
            "counts": counts.tolist()}


__all__ = ("DEFAULT_MAX_DIST", "image_counts", "ods_f", "precision_recall", "seism_thresholds", "thin")
