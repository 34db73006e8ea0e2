"""`xtask` (supplement Tab. 9, "X-task", Zamir et al. CVPR 2020): with full labels, the
perceptual loss through cross-task networks PRE-TRAINED by a `direct_map` (or
`perceptual_map`) run and loaded frozen from its model directory (`--xtask_mappings_dir`).

Loading reads `config.json` (JSON) and the TensorFlow checkpoint's tensors by name
(`tf.train.load_checkpoint`): nothing from the directory is executed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import List

import tensorflow as tf

from mtpsl_tf.methods.base import METHODS
from mtpsl_tf.methods.cross_task.common import CrossTaskMethod, CrossTaskOptions, parse_filters
from mtpsl_tf.models.segnet import VARIANT_FILTERS
from mtpsl_tf.options import option

FLAG = "--xtask_mappings_dir"
PRETRAINING_METHODS = ("direct_map", "perceptual_map")
# The training checkpoint names the method's i-th extra layer "method_<i>" and each variable
# by its path below that layer, dots for slashes (training/run.py::weights_trackable).
MAPPINGS_NAME = "method_0"


@dataclasses.dataclass(frozen=True)
class XTaskOptions(CrossTaskOptions):
    """The flags of `--method=xtask`."""

    xtask_mappings_dir: str = option("", "xtask: model directory of a direct_map / perceptual_map run whose "
                                     "mapping networks are loaded frozen (its best, else latest, checkpoint).")

    def validate(self) -> None:
        super().validate()
        if not self.xtask_mappings_dir:
            raise ValueError(f"--method=xtask needs {FLAG} (the model directory of a direct_map run)")


def read_pretraining_config(model_dir: str) -> dict:
    """The JSON config of the pre-training run; ValueError naming the flag if it is not one."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{FLAG}={model_dir!r}: no config.json there; expected the model directory of a "
                         f"{' or '.join(PRETRAINING_METHODS)} run")
    with open(path) as f:
        config = json.load(f)
    method = config.get("method", {}).get("method")
    if method not in PRETRAINING_METHODS:
        raise ValueError(f"{FLAG}={model_dir!r} was trained with --method={method}; expected one of "
                         f"{PRETRAINING_METHODS} (a run that learns cross-task mapping networks)")
    return config


def pretrained_filters(config: dict) -> List[int]:
    """The mapping SegNets' widths of the pre-training run (its --map_filters, else --filters,
    else its variant's)."""
    widths = parse_filters(str(config.get("options", {}).get("map_filters", "")))
    model = config.get("model", {})
    return widths or parse_filters(str(model.get("filters", "")), "filters") or list(
        VARIANT_FILTERS[model.get("variant", "standard")])


def find_checkpoint(model_dir: str) -> str:
    for sub in ("best", "checkpoints"):
        path = tf.train.latest_checkpoint(os.path.join(model_dir, sub))
        if path:
            return path
    raise ValueError(f"{FLAG}={model_dir!r}: no checkpoint in best/ or checkpoints/")


def checkpoint_view(mappings) -> tf.train.Checkpoint:
    """`mappings`' variables under the names the training checkpoint gives them."""
    variables = {v.path.split("/", 1)[-1].replace("/", "."): v for v in mappings.weights}
    return tf.train.Checkpoint(**{MAPPINGS_NAME: tf.train.Checkpoint(**variables)})


def load_mappings(mappings, model_dir: str) -> str:
    """Restores every variable of `mappings` from the run's checkpoint (tensor values only);
    returns its path. Raises ValueError naming the flag and the directory when a variable is
    missing or has another shape (other tasks or widths)."""
    path = find_checkpoint(model_dir)
    try:
        checkpoint_view(mappings).restore(path).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as err:
        raise ValueError(f"{FLAG}={model_dir!r}: checkpoint {path} does not hold this run's mapping networks "
                         f"(other tasks or widths?): {str(err)[:400]}") from None
    return path


@METHODS.register("xtask")
class XTask(CrossTaskMethod):
    """weighting(task losses) + map_weight * sum_n sum_{perceptual items}
    |m_{s->t}(pred_s) - m_{s->t}(y_s)|_1 / B, with m frozen (pre-trained)."""

    Options = XTaskOptions
    extra_names = ("perceptual",)

    def mapping_filters(self, network) -> List[int]:
        return pretrained_filters(read_pretraining_config(self.options.xtask_mappings_dir))

    def build(self, network) -> None:
        super().build(network)
        self.mappings.trainable = False
        load_mappings(self.mappings, self.options.xtask_mappings_dir)

    def extra_terms(self, outputs, batch, step):
        return {"perceptual": self.perceptual_sum(outputs, batch["labels"], batch["label_mask"], step)}

    def extra_weights(self):
        return {"perceptual": self.options.map_weight}
