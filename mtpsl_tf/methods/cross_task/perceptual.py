"""`perceptual_map` (supplement Tab. 3, 5, 7, "Perceptual-Map"): Zamir et al.'s perceptual
loss with mappings learned on the fly. For an image with task s labelled and t unlabelled, s's
prediction and s's label both go through m_{s->t} and their outputs are compared (L1), which
trains the network only; the mappings are fitted by the Direct-Map loss with the network's
predictions held constant, which trains the mappings only."""

from __future__ import annotations

import dataclasses

from mtpsl_tf.methods.base import METHODS
from mtpsl_tf.methods.cross_task.common import CrossTaskMethod, TrainedMappingOptions
from mtpsl_tf.options import option


@dataclasses.dataclass(frozen=True)
class PerceptualMapOptions(TrainedMappingOptions):
    """The flags of `--method=perceptual_map`."""

    map_fit_weight: float = option(1.0, "perceptual_map: weight of the mappings' fitting loss (it trains the "
                                   "mapping networks only).")

    def validate(self) -> None:
        super().validate()
        if self.map_fit_weight <= 0:
            raise ValueError(f"--map_fit_weight must be > 0, got {self.map_fit_weight}")


@METHODS.register("perceptual_map")
class PerceptualMap(CrossTaskMethod):
    """weighting(task losses) + map_weight * perceptual / B + map_fit_weight * fit / B."""

    Options = PerceptualMapOptions
    extra_names = ("perceptual", "map_fit")

    def extra_terms(self, outputs, batch, step):
        labels, mask = batch["labels"], batch["label_mask"]
        return {"perceptual": self.perceptual_sum(outputs, labels, mask, step),
                "map_fit": self.direct_sum(outputs, labels, mask, step, train_network=False)}

    def extra_weights(self):
        return {"perceptual": self.options.map_weight, "map_fit": self.options.map_fit_weight}
