"""Metrics for dense prediction, and Delta-MTL.

Streaming Keras metrics (used in training and the `training` evaluation protocol):
- `ConfusionMatrix`: mIoU and pixel accuracy (fractions) from a dataset-level confusion matrix.
- `DepthMetrics`: abs_err, rmse, rel_err over valid depth pixels.
- `NormalMetrics`: mean / median / rmse angle (degrees) and % of pixels within 11.25/22.5/30.
- `SaliencyMetrics`: saliency mIoU and max F-measure over a threshold sweep (MTL-PyTorch).
- `EdgeMetrics`: edge odsF, an in-graph approximation of seism's boundary matching.
- `delta_mtl`: supplement eq. 1, the mean relative gain over single-task references.
Numpy, per image at its own size (the `paper` protocol): `ods_f` (boundary.py: seism's edge
odsF with thinning and one-to-one matching), `thinning.thin`.

Every streaming metric's state is summed across replicas under `tf.distribute` strategies.
The names are imported on first use, so the numpy modules (and the processes `ods_f` starts)
do not import TensorFlow.
"""

import importlib

_WHERE = {
    "delta_mtl": "mtpsl_tf.metrics.delta",
    "DepthMetrics": "mtpsl_tf.metrics.depth",
    "EdgeMetrics": "mtpsl_tf.metrics.edge",
    "NormalMetrics": "mtpsl_tf.metrics.normal",
    "SaliencyMetrics": "mtpsl_tf.metrics.saliency",
    "ConfusionMatrix": "mtpsl_tf.metrics.segmentation",
    "ods_f": "mtpsl_tf.metrics.boundary",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'mtpsl_tf.metrics' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
