"""Per-image time of the paper-protocol edge odsF (`mtpsl_tf.metrics.boundary`) and, optionally,
of BSDS' evaluation through PyPI `pyedgeeval` (its thinning + correspondPixels, 99 thresholds).

    python benchmarks/edge_ods.py --size=512 --images=3 --pyedgeeval

Maps: the boundaries of a random Voronoi partition as ground truth; as prediction the same
boundaries shifted by (2, 1) pixels, blurred (sigma 2), plus low-frequency noise, quantised to
8 bits as the saved PNGs of the protocol. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import scipy.ndimage as ndi


def synthetic_pair(seed: int, size: int, sites: int = 30):
    """(probability [size, size] in k/255, ground-truth bool [size, size])."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, size, (sites, 2))
    yy, xx = np.mgrid[:size, :size]
    region = ((yy[..., None] - points[:, 0]) ** 2 + (xx[..., None] - points[:, 1]) ** 2).argmin(-1)
    gt = np.zeros((size, size), bool)
    gt[:-1] |= region[:-1] != region[1:]
    gt[:, :-1] |= region[:, :-1] != region[:, 1:]
    noise = ndi.gaussian_filter(rng.normal(0, 1, (size, size)), 4) * 4
    prob = ndi.gaussian_filter(np.roll(gt, (2, 1), (0, 1)).astype(float), 2.0) * 5 + 0.15 * noise
    return np.floor(255 * np.clip(prob, 0, 1)) / 255, gt


def _time(fn, pairs):
    start = time.perf_counter()
    results = [fn(prob, gt) for prob, gt in pairs]
    return (time.perf_counter() - start) / len(pairs), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="image height = width")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--max_dist", type=float, default=0.0075)
    parser.add_argument("--pyedgeeval", action="store_true", help="also time pyedgeeval (slow: minutes per image)")
    args = parser.parse_args()

    from mtpsl_tf.metrics.boundary import image_counts, seism_thresholds

    thresholds = seism_thresholds()
    pairs = [synthetic_pair(seed, args.size) for seed in range(args.images)]
    ours_s, ours = _time(lambda p, g: image_counts(p, g, thresholds, args.max_dist, thin_labels=False), pairs)
    report = {"size": args.size, "images": args.images, "thresholds": len(thresholds), "ours_s_per_image": ours_s}
    if args.pyedgeeval:
        from pyEdgeEval.common.binary_label.evaluate_boundaries import evaluate_boundaries_threshold

        ref_s, ref = _time(lambda p, g: np.stack(evaluate_boundaries_threshold(
            thresholds, p, g, max_dist=args.max_dist), axis=1), pairs)
        diff = np.abs(np.array(ours) - np.array(ref)).max(axis=(0, 1))
        report.update(pyedgeeval_s_per_image=ref_s, speedup=ref_s / ours_s,
                      max_abs_count_difference=dict(zip(("cntR", "sumR", "cntP", "sumP"), diff.tolist())))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
