"""Streaming Keras metrics for dense prediction, and Delta-MTL.

- `ConfusionMatrix`: mIoU and pixel accuracy (fractions) from a dataset-level confusion matrix.
- `DepthMetrics`: abs_err, rmse, rel_err over valid depth pixels.
- `NormalMetrics`: mean / median / rmse angle (degrees) and % of pixels within 11.25/22.5/30.
- `SaliencyMetrics`: saliency mIoU and max F-measure over a threshold sweep (MTL-PyTorch).
- `EdgeMetrics`: edge odsF, an in-graph approximation of seism's boundary matching.
- `delta_mtl`: supplement eq. 1, the mean relative gain over single-task references.

Every metric's state is summed across replicas under `tf.distribute` strategies.
"""

from mtpsl_tf.metrics.delta import delta_mtl
from mtpsl_tf.metrics.depth import DepthMetrics
from mtpsl_tf.metrics.edge import EdgeMetrics
from mtpsl_tf.metrics.normal import NormalMetrics
from mtpsl_tf.metrics.saliency import SaliencyMetrics
from mtpsl_tf.metrics.segmentation import ConfusionMatrix

__all__ = ["ConfusionMatrix", "DepthMetrics", "EdgeMetrics", "NormalMetrics", "SaliencyMetrics",
           "delta_mtl"]
