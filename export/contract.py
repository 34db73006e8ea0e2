"""The exported models' input/output contract, derived from the tasks (no task list here).

Input: `image` float32 `[N, H, W, 3]`, RGB in [0, 1] (or uint8 in [0, 255] for the SavedModel's
`serving_uint8` signature). Outputs, per task, by the task's kind:

- classification task (a `log_softmax` head): `<name>_probs` float32 `[N, H, W, C]` (softmax
  probabilities) and `<name>_label` int32 `[N, H, W]` (argmax class id);
- any other task (regression): `<name>` float32 `[N, H, W, channels]`, the head's output as is
  (depth linear, normals unit length).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

import numpy as np

from mtpsl_tf.models.input_size import SEGNET_INPUT_MULTIPLE, SEGNET_REASON, check_multiple

STRIDE = SEGNET_INPUT_MULTIPLE  # SegNet pools five times; every backbone is exported at its sizes
PROBS, LABEL = "_probs", "_label"


def is_classification(task) -> bool:
    """True for tasks whose head emits log-probabilities over classes."""
    return task.activation == "log_softmax"


def check_size(height: int, width: int) -> None:
    """Raises ValueError unless both are positive integer multiples of 32 (`STRIDE`)."""
    check_multiple(height, width, STRIDE, "export", SEGNET_REASON)


def output_spec(tasks: Sequence, height: int, width: int) -> Dict[str, Dict[str, object]]:
    """Output name -> {"task", "dtype", "shape" (batch as "N"), "meaning"}, in task order."""
    spec = {}
    for task in tasks:
        if is_classification(task):
            spec[task.name + PROBS] = {
                "task": task.name, "dtype": "float32", "shape": ["N", height, width, task.channels],
                "meaning": f"softmax probabilities over {task.channels} classes"}
            spec[task.name + LABEL] = {
                "task": task.name, "dtype": "int32", "shape": ["N", height, width],
                "meaning": "argmax class id"}
        else:
            spec[task.name] = {
                "task": task.name, "dtype": "float32", "shape": ["N", height, width, task.channels],
                "meaning": f"{task.activation} head output"}
    return spec


def output_names(tasks: Sequence) -> List[str]:
    return list(output_spec(tasks, 0, 0))


def postprocess(outputs: Mapping[str, object], tasks: Sequence) -> Dict[str, object]:
    """Network outputs `{task: [N,H,W,C], "feature": ...}` -> the exported outputs (see module doc).

    A classification output may be the log-probabilities or the logits (the LiteRT form
    `mtpsl_tf.models.logit_heads`): softmax and argmax give the same result for both, since
    they differ by one value per pixel. softmax, not exp: LiteRT's SOFTMAX runs in XNNPACK.
    """
    import tensorflow as tf  # here: flag checks using this module must not wait for TensorFlow

    result = {}
    for task in tasks:
        value = outputs[task.name]
        if is_classification(task):
            result[task.name + PROBS] = tf.nn.softmax(value, axis=-1)
            result[task.name + LABEL] = tf.argmax(value, axis=-1, output_type=tf.int32)
        else:
            result[task.name] = value
    return result


def network_form(outputs: Mapping[str, np.ndarray], task) -> np.ndarray:
    """The exported outputs of `task` -> what its head emits (what `task.update_metric` takes).

    Classification: log of the probabilities (-inf where a quantised probability is 0, which
    keeps the argmax); others: the output itself.
    """
    if is_classification(task):
        with np.errstate(divide="ignore"):
            return np.log(np.asarray(outputs[task.name + PROBS], np.float32))
    return np.asarray(outputs[task.name])
