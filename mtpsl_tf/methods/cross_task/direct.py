"""`direct_map` (supplement Tab. 3, 5, 7, "Direct-Map"): for every image and pair (s, t) with
s unlabelled and t labelled, t's loss of m_{s->t}(prediction of s) against t's label. The
mapping networks (whole SegNets) and the multi-task network learn jointly from scratch: with
one label per image no image has the two labels a pre-training would need."""

from __future__ import annotations

import dataclasses

from mtpsl_tf.methods.base import METHODS
from mtpsl_tf.methods.cross_task.common import MAP_PAIRS_HELP, CrossTaskMethod, parse_filters, validate_common
from mtpsl_tf.options import option


@dataclasses.dataclass(frozen=True)
class DirectMapOptions:
    """The flags of `--method=direct_map`."""

    map_weight: float = option(1.0, "direct_map / perceptual_map / xtask: weight of the cross-task term.")
    map_filters: str = option("", "direct_map / perceptual_map: the mapping SegNets' five widths "
                              "(empty: the network's --filters).")
    map_pairs: str = option("auto", MAP_PAIRS_HELP)

    def validate(self) -> None:
        validate_common(self)
        parse_filters(self.map_filters)


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
