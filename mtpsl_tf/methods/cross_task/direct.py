"""`direct_map` (supplement Tab. 3, 5, 7, "Direct-Map"): for every image and pair (s, t) with
s unlabelled and t labelled, t's loss of m_{s->t}(prediction of s) against t's label. The
mapping networks (whole SegNets) and the multi-task network learn jointly from scratch: with
one label per image no image has the two labels a pre-training would need."""

from __future__ import annotations

import dataclasses

from mtpsl_tf.methods.base import METHODS
from mtpsl_tf.methods.cross_task.common import CrossTaskMethod, TrainedMappingOptions


@dataclasses.dataclass(frozen=True)
class DirectMapOptions(TrainedMappingOptions):
    """The flags of `--method=direct_map` (those of every method training its mappings)."""


@METHODS.register("direct_map")
class DirectMap(CrossTaskMethod):
    """weighting(task losses) + map_weight * sum_n sum_{fit items} L_t(m_{s->t}(pred_s), y_t) / B;
    the gradient reaches both the mappings and the network."""

    Options = DirectMapOptions
    extra_names = ("direct_map",)

    def extra_terms(self, outputs, batch, step):
        return {"direct_map": self.direct_sum(outputs, batch["labels"], batch["label_mask"], step,
                                              train_network=True)}

    def extra_weights(self):
        return {"direct_map": self.options.map_weight}
