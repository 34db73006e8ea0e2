"""The paper-protocol edge odsF (`mtpsl_tf.metrics.boundary.ods_f`) against BSDS' C++ code
(PyPI `pyedgeeval`, a test-only dependency: GPL-2.0), a brute-force matching and hand cases;
the thinning against scikit-image.

Tolerances against pyedgeeval's correspondPixels: sumR, sumP exact; cntP, cntR within 1% + 2
pixels per threshold (its min-cost matching over randomly sparsified outlier edges may match a
few pixels fewer than the maximum ours finds: on 512 x 512 maps up to ~0.1% fewer, and two
BSDS runs differ by about as much); odsF within 0.01.
"""

import numpy as np
import pytest
import scipy.ndimage as ndi

from mtpsl_tf.metrics import boundary
from mtpsl_tf.metrics.edge import ods_f
from mtpsl_tf.metrics.thinning import guo_hall_tables, thin

H, W = 36, 48
MAX_DIST = 0.05  # x diagonal 60 = 3 px: room for shifted / doubled edges on small maps


def _voronoi_edges(seed, h=H, w=W, sites=6):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, 1, (sites, 2)) * [h, w]
    yy, xx = np.mgrid[:h, :w]
    region = ((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2).argmin(-1)
    gt = np.zeros((h, w), bool)
    gt[:-1] |= region[:-1] != region[1:]
    gt[:, :-1] |= region[:, :-1] != region[:, 1:]
    return thin(gt)  # one pixel wide, so thinning the labels changes nothing


def _cases():
    rng = np.random.default_rng(0)
    gt = _voronoi_edges(1)
    blur = ndi.gaussian_filter(gt.astype(float), 1.5)
    thick = np.clip(blur / blur.max() * 1.2, 0, 1)
    shifted = np.roll(thick, (2, 1), (0, 1))
    doubled = np.clip(np.roll(gt, 2, 0) * 0.8 + np.roll(gt, -2, 0) * 0.6, 0, 1)
    noisy = np.clip(thick * 0.7 + rng.uniform(0, 0.5, gt.shape), 0, 1)
    return {
        "thick": (thick, gt), "shifted": (shifted, gt), "doubled": (doubled, gt),
        "noisy": (noisy, gt), "empty_prediction": (np.zeros(gt.shape), gt),
        "empty_label": (thick, np.zeros(gt.shape, bool)),
    }


def _with_ignore(prob, gt):
    label = gt.astype(np.float64)
    label[:, :8] = -1  # an ignored band (e.g. padding) crossing edges
    label[24:, 32:] = -1
    return prob, label


def _pyedgeeval_counts(prob, label, max_dist):
    """BSDS' evaluation of one image, [K, 4] (cntR, sumR, cntP, sumP): per threshold the map is
    binarised and thinned by `thin` (equal to scikit-image's, i.e. bwmorph; pyedgeeval's own
    port stops as soon as ONE sub-iteration deletes nothing, so it leaves some pixels MATLAB
    removes) and matched by BSDS' correspondPixels. Ignored pixels are removed from both maps
    first, our definition of ignore."""
    from pyEdgeEval._lib import correspond_pixels

    valid = label >= 0
    prob, gt = np.where(valid, prob, 0.0), valid & (label >= 0.5)
    rows = []
    for t in boundary.seism_thresholds():
        pred = thin(prob >= t)
        if gt.any():
            match_pred, match_gt, _, _ = correspond_pixels(pred, gt, max_dist=max_dist)
            rows.append([(match_gt > 0).sum(), gt.sum(), (match_pred > 0).sum(), pred.sum()])
        else:
            rows.append([0, 0, 0, pred.sum()])
    return np.array(rows)


def _seism_ods(counts):
    """odsF from summed counts, transcribing seism's gather_measure + general_ods."""
    best = 0.0
    for cnt_r, sum_r, cnt_p, sum_p in counts:
        if sum_p != 0 and cnt_r != 0:
            recall, precision = cnt_r / sum_r, cnt_p / sum_p
        elif sum_p == 0 and cnt_r == 0:
            recall, precision = 0.0, 1.0
        elif sum_r == 0 and cnt_p == 0:
            recall, precision = 1.0, 0.0
        else:
            recall, precision = 0.0, 0.0
        f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
        best = max(best, f)
    return best


def _close_counts(ours, ref):
    np.testing.assert_array_equal(ours[:, [1, 3]], ref[:, [1, 3]])  # sumR, sumP
    for column in (0, 2):
        tol = 0.01 * np.maximum(ref[:, 1], ref[:, 3]) + 2
        assert np.all(np.abs(ours[:, column] - ref[:, column]) <= tol), (column, ours[:, column], ref[:, column])


@pytest.mark.parametrize("name, ignore", [(name, False) for name in _cases()] + [
    ("thick", True), ("doubled", True), ("noisy", True)])
def test_counts_match_pyedgeeval(name, ignore):
    prob, gt = _cases()[name]
    prob, label = _with_ignore(prob, gt) if ignore else (prob, gt.astype(float))
    ours = boundary.image_counts(prob, label, boundary.seism_thresholds(), MAX_DIST)
    ref = _pyedgeeval_counts(prob, label, MAX_DIST)
    _close_counts(ours, ref)
    # BSDS' correspondPixels is randomised (its counts for one input vary from run to run: the
    # noisy case's odsF took 0.983-0.991 in 15 runs and 0.975 once in CI) and never beats a
    # maximum matching, which ours is: ours is at least the reference, and close to it.
    assert _seism_ods(ref) - 1e-12 <= _seism_ods(ours) <= _seism_ods(ref) + 0.03


def test_dataset_ods_matches_pyedgeeval_and_workers():
    cases = [_cases()[name] for name in ("thick", "doubled", "empty_label")]
    probs, labels = [p for p, _ in cases], [g.astype(float) for _, g in cases]
    ref = sum(_pyedgeeval_counts(p, g, MAX_DIST) for p, g in zip(probs, labels))
    result = ods_f(probs, labels, max_dist=MAX_DIST)
    assert abs(result["odsF"] - _seism_ods(ref)) <= 0.01
    assert result["odsF"] == pytest.approx(_seism_ods(np.array(result["counts"])), abs=1e-12)
    parallel = ods_f(probs, labels, max_dist=MAX_DIST, workers=2, progress=True)
    assert parallel == result
    assert set(result) >= {"odsF", "threshold", "precision", "recall"}
    f = 2 * result["precision"] * result["recall"] / (result["precision"] + result["recall"])
    assert f == pytest.approx(result["odsF"])


def _max_matching_brute_force(pred, gt, radius):
    """Kuhn's augmenting paths on the explicit pair list (slow, obviously correct)."""
    ps, gs = np.argwhere(pred), np.argwhere(gt)
    adj = [[j for j, g in enumerate(gs) if ((p - g) ** 2).sum() <= radius ** 2] for p in ps]
    owner = [-1] * len(gs)

    def augment(i, seen):
        for j in adj[i]:
            if j not in seen:
                seen.add(j)
                if owner[j] < 0 or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return sum(augment(i, set()) for i in range(len(ps)))


@pytest.mark.parametrize("seed", range(4))
def test_matching_is_one_to_one_maximum(seed):
    rng = np.random.default_rng(seed)
    gt = rng.random((16, 20)) < 0.15
    pred = thin(rng.random((16, 20)) < 0.25)
    radius = 0.06 * np.hypot(16, 20)
    counts = boundary.image_counts(pred.astype(float), gt.astype(float), [0.5], 0.06, thin_labels=False)
    expected = _max_matching_brute_force(pred, gt, radius)
    np.testing.assert_array_equal(counts[0], [expected, gt.sum(), expected, pred.sum()])


def test_hand_case_doubled_line():
    """A 1-px line and two parallel predicted lines 1 px away: one-to-one matching matches
    half of the predictions (many-to-one would match all), P = 1/2, R = 1, F = 2/3."""
    label = np.zeros((20, 30))
    label[10, 5:25] = 1
    prob = np.zeros((20, 30))
    prob[9, 5:25] = prob[11, 5:25] = 0.9
    result = ods_f([prob], [label], max_dist=1.5 / np.hypot(20, 30))
    assert result["precision"] == pytest.approx(0.5)
    assert result["recall"] == pytest.approx(1.0)
    assert result["odsF"] == pytest.approx(2 / 3)
    assert result["threshold"] == pytest.approx(0.01)


def test_special_cases():
    """No ground truth anywhere: R = 1, P = 0 -> F = 0; no prediction: P = 1, R = 0 -> F = 0."""
    label = np.zeros((8, 8))
    assert ods_f([np.full((8, 8), 0.5)], [label])["odsF"] == 0.0
    edge = label.copy()
    edge[4] = 1
    result = ods_f([np.zeros((8, 8))], [edge])
    assert (result["odsF"], result["precision"], result["recall"]) == (0.0, 1.0, 0.0)


def test_thin_equals_scikit_image():
    from skimage.morphology import thin as skimage_thin

    rng = np.random.default_rng(3)
    for density in (0.1, 0.4, 0.7, 0.95):
        binary = ndi.binary_dilation(rng.random((40, 50)) < density * 0.3, iterations=2)
        np.testing.assert_array_equal(thin(binary), skimage_thin(binary))
    first, second = guo_hall_tables()
    assert first.shape == second.shape == (256,) and not first[255] and not first[0]


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="same size"):
        ods_f([np.zeros((4, 4))], [np.zeros((4, 5))])
    with pytest.raises(ValueError, match="probability maps but"):
        ods_f([np.zeros((4, 4))], [])
    with pytest.raises(ValueError, match="workers"):
        ods_f([np.zeros((4, 4))], [np.zeros((4, 4))], workers=0)
    with pytest.raises(ValueError, match="max_dist"):
        ods_f([np.zeros((4, 4))], [np.zeros((4, 4))], max_dist=-1)
