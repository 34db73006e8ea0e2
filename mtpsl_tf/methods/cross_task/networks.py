"""The cross-task mapping networks: one whole SegNet per ordered task pair (s, t), taking
task s's mapping input (`Task.mapping_prediction` / `mapping_label`) and predicting task t
with t's head (the supplement: "as in [Zamir et al.] we use the whole SegNet as the
cross-task mapping functions").

The pairs differ in input channels and head, so they are separate networks and a step runs a
static loop over the T(T-1) of them, each on the whole local batch (inactive items are masked
out of the losses, so every shape is static).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Tuple

import keras
import tensorflow as tf

from mtpsl_tf.models.input_size import SEGNET_INPUT_MULTIPLE
from mtpsl_tf.models.layers import PACKAGE
from mtpsl_tf.models.segnet import SegNet


def ordered_pairs(names: Sequence[str]) -> List[Tuple[str, str]]:
    """Every (source, target) of distinct tasks, source-major in task order."""
    return [(s, t) for s in names for t in names if s != t]


def pair_key(source: str, target: str) -> str:
    """The network name of the pair: "map_<source>_to_<target>"."""
    return f"map_{source}_to_{target}"


@keras.saving.register_keras_serializable(package=PACKAGE)
class PairMappings(keras.layers.Layer):
    """One SegNet per ordered pair of `heads`' tasks.

    Args:
        heads: ordered task name -> head spec {"channels", "activation"} (the tasks' own).
        filters: the five SegNet widths of every mapping network.

    Call `map(source, target, x, training)` with x `[B,H,W,channels of source]` (H, W multiples
    of 32); returns task `target`'s output `[B,H,W,channels of target]` (its head's activation).
    """

    def __init__(self, heads: Mapping[str, Mapping[str, object]], filters: Sequence[int], **kwargs):
        super().__init__(**kwargs)
        if len(heads) < 2:
            raise ValueError(f"cross-task mappings need at least two tasks, got {list(heads)}")
        self.heads = {name: dict(spec) for name, spec in heads.items()}
        self.filters = [int(f) for f in filters]
        self.networks: Dict[str, SegNet] = {
            pair_key(s, t): SegNet({t: self.heads[t]}, filters=self.filters, name=pair_key(s, t))
            for s, t in ordered_pairs(list(self.heads))}

    def build(self, input_shape=None):
        """Creates every network's variables (input_shape is ignored)."""
        if self.built:
            return
        size = SEGNET_INPUT_MULTIPLE
        for s, t in ordered_pairs(list(self.heads)):
            channels = int(self.heads[s]["channels"])
            self.networks[pair_key(s, t)](tf.zeros([1, size, size, channels]), training=False)
        super().build(input_shape)

    def pairs(self) -> List[Tuple[str, str]]:
        return ordered_pairs(list(self.heads))

    def map(self, source: str, target: str, x, training: bool = False) -> tf.Tensor:
        return self.networks[pair_key(source, target)](x, training=training)[target]

    def map_frozen(self, source: str, target: str, x) -> tf.Tensor:
        """`map` in inference mode whose output carries no gradient to the network's weights
        (only to `x`): the weights enter as constants through Keras' stateless call."""
        network = self.networks[pair_key(source, target)]
        trainable = [tf.stop_gradient(v) for v in network.trainable_variables]
        non_trainable = [tf.convert_to_tensor(v) for v in network.non_trainable_variables]
        outputs, _ = network.stateless_call(trainable, non_trainable, x, training=False)
        return outputs[target]

    def call(self, inputs, training=False):
        """inputs: pair key -> mapping input; returns pair key -> target output."""
        return {key: self.networks[key](x, training=training)[key.rsplit("_to_", 1)[1]]
                for key, x in inputs.items()}

    def get_config(self):
        config = super().get_config()
        config.update(heads=self.heads, filters=self.filters)
        return config
