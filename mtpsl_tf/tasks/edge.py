"""Edge detection (PASCAL-Context): 1-channel LOGIT head, balanced BCE with a fixed weight."""

from __future__ import annotations

import math

from mtpsl_tf.metrics import EdgeMetrics
from mtpsl_tf.metrics.edge import DEFAULT_MAX_DIST
from mtpsl_tf.tasks.base import HIGHER
from mtpsl_tf.tasks.registry import TASKS
from mtpsl_tf.tasks.saliency import BinaryLogitTask, balanced_bce_terms


@TASKS.register("edge")
class Edge(BinaryLogitTask):
    """Boundary detection (MTL-PyTorch 'edge').

    Head: 1 channel, activation "linear": the model outputs LOGITS; the metric and `visualise`
    apply the sigmoid. Labels: float32 `[B,H,W,1]`, 1 edge, 0 not, -1 ignore.
    Loss of one image: `balanced_bce_terms` with the fixed weight w = `pos_weight` (MTL-PyTorch's
    edge_w = 0.95: 0.95 on edge pixels, 0.05 on the others), summed over the non-ignored pixels and
    divided by their number (the reference's size_average, per image).
    Metric: `EdgeMetrics` odsF, an in-graph APPROXIMATION of seism's (no one-to-one matching, no
    thinning; tolerance `max_dist` x image diagonal): close to, not identical with, published odsF.

    Args:
        name: task name.
        pos_weight: weight of the positive pixels, in (0, 1).
        max_dist: odsF matching tolerance as a fraction of the image diagonal (seism: 0.0075).
    """

    kind = "edge"
    metric_directions = {"odsF": HIGHER}
    primary_metric = "odsF"

    def __init__(self, name: str = "edge", pos_weight: float = 0.95, max_dist: float = DEFAULT_MAX_DIST):
        if isinstance(pos_weight, bool) or not isinstance(pos_weight, (int, float)) or not 0.0 < pos_weight < 1.0:
            raise ValueError(f"task {name!r}: pos_weight must be in (0, 1), got {pos_weight!r}")
        if isinstance(max_dist, bool) or not isinstance(max_dist, (int, float)) or not (
                math.isfinite(max_dist) and max_dist >= 0):
            raise ValueError(f"task {name!r}: max_dist must be a finite number >= 0, got {max_dist!r}")
        self.name = name
        self.pos_weight = float(pos_weight)
        self.max_dist = float(max_dist)

    def loss_terms(self, pred, label):
        return balanced_bce_terms(pred, label, pos_weight=self.pos_weight)

    def make_metric(self):
        return EdgeMetrics(max_dist=self.max_dist, name=f"{self.name}_metrics")

    def paper_scorer(self, workers: int = 1):
        """seism's odsF (`metrics.boundary`) on the saved 8-bit PNG, in `workers` processes."""
        from mtpsl_tf.metrics.original_size import EdgeScorer

        return EdgeScorer(self.max_dist, workers=workers, progress=True)
