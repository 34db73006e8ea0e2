"""`ssl`: the paper's semi-supervised baseline (supplement Tab. 3-8, "SSL").

Supervised losses on view 1; on every image's UNLABELLED tasks, consistency between the
view-2 prediction and the view-1 prediction resampled into view 2 (each Task's
`ssl_consistency`: confident pseudo-labels for semantic / binary tasks, agreement-thresholded
distances for depth / normals, from the authors' unused `seg_con` / `depth_con` /
`normal_con`). docs/BASELINES.md records every choice.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List

import tensorflow as tf

from mtpsl_tf.data import alignment
from mtpsl_tf.methods.base import METHODS, LossTerms, Method, presence, two_view_outputs
from mtpsl_tf.methods.supervised import task_losses
from mtpsl_tf.options import option
from mtpsl_tf.tasks.base import safe_ratio


def parse_thresholds(text: str) -> Dict[str, float]:
    """"semantic=0.9,depth=0.05" -> {"semantic": 0.9, "depth": 0.05}; ValueError naming
    --ssl_thresholds on a malformed entry."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(f"--ssl_thresholds: expected task=value entries separated by commas, got {item!r}")
    return out


@dataclasses.dataclass(frozen=True)
class SSLOptions:
    """The flags of `--method=ssl`."""

    ssl_weight: float = option(1.0, "ssl: weight of the cross-view consistency term.")
    ssl_thresholds: str = option(
        "", "ssl: task=value overrides of the tasks' thresholds (defaults: semantic / binary pseudo-label "
        "confidence 0.95, depth and normal agreement 0.1, the authors' values).")

    def validate(self) -> None:
        parse_thresholds(self.ssl_thresholds)
        if self.ssl_weight < 0:
            raise ValueError(f"--ssl_weight must be >= 0, got {self.ssl_weight}")


def align_to_view2(task, view1_pred, transform) -> tuple:
    """View 1's prediction `[B,H,W,C]` resampled at each view-2 pixel (nearest), with the
    task's zoom (depth / scale) and mirror (normals' x) hooks applied per image; returns
    (aligned `[B,H,W,C]`, inside float32 `[B,H,W]`)."""
    height, width = view1_pred.shape[1], view1_pred.shape[2]
    indices, inside = alignment.view1_positions(transform, height, width)
    aligned = tf.gather_nd(view1_pred, indices, batch_dims=1)
    zoom, mirrored = alignment.transform_zoom_and_mirror(transform)
    aligned = task.zoom_label(aligned, tf.reshape(zoom, [-1, 1, 1, 1]))
    aligned = tf.where(tf.reshape(mirrored, [-1, 1, 1, 1]), task.mirror_label_values(aligned), aligned)
    return aligned, inside


@METHODS.register("ssl")
class SemiSupervised(Method):
    """SSL baseline: weighting(task losses on view 1) + ssl_weight * consistency, where
    consistency = sum_n sum_{t unlabelled in n} w_t * C_t(n) / B (w_t the static loss weight,
    C_t the task's `ssl_consistency` of image n, view 2 against aligned view 1)."""

    Options = SSLOptions
    two_views = True
    align_views = True

    def __init__(self, facts, tasks=None):
        super().__init__(facts, tasks)
        overrides = parse_thresholds(self.options.ssl_thresholds)
        names = [t.name for t in self.tasks]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise ValueError(f"--ssl_thresholds names {unknown}, which are not tasks of this run ({names})")
        self.thresholds = {t.name: float(overrides.get(t.name, t.ssl_threshold)) for t in self.tasks}

    def extra_loss_names(self) -> List[str]:
        return ["ssl"]

    def consistency(self, view1, view2, transform, label_mask, global_batch_size: int) -> tf.Tensor:
        """This replica's share of the consistency term (scalar)."""
        total = tf.constant(0.0, tf.float32)
        for task in self.tasks:  # static: one term per task kind
            target, inside = align_to_view2(task, view1[task.name], transform)
            numerator, count = task.ssl_consistency(view2[task.name], target, inside, self.thresholds[task.name])
            unlabelled = 1.0 - tf.cast(label_mask[task.name], tf.float32)
            total += self.loss_weights[task.name] * tf.reduce_sum(unlabelled * safe_ratio(numerator, count))
        return total / float(global_batch_size)

    def loss_terms(self, network, batch, global_batch_size, progress, step):
        view1, view2 = two_view_outputs(network, batch, "ssl")
        losses = task_losses(self.tasks, view1, batch["labels"], batch["label_mask"], global_batch_size,
                             self.facts.loss_reduction)
        ssl = self.consistency(view1, view2, batch["view_transform"], batch["label_mask"], global_batch_size)
        return LossTerms(losses, presence(self.tasks, batch["label_mask"]), {"ssl": ssl},
                         {"ssl": self.options.ssl_weight})
