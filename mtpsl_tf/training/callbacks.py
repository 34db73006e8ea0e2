"""Callbacks: per-epoch checkpoint + resume state, Delta-MTL model selection, TensorBoard."""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Dict, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from mtpsl_tf.errors import NonFiniteLossError
from mtpsl_tf.tasks.base import Task
from mtpsl_tf.training import delta as delta_lib


log = logging.getLogger("mtpsl_tf")


def write_json_atomic(path: str, payload) -> None:
    """Writes JSON to `path` via a temp file + rename, so readers never see half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True, default=_jsonable)
    os.replace(tmp, path)


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def scalar(value) -> float:
    """A log value as a float (scalars, or `[1]` arrays under MultiWorkerMirroredStrategy)."""
    return float(np.asarray(value).reshape(-1)[0])


def defined(value) -> Optional[float]:
    """A log value as a float, or None when it is NaN (an undefined metric, e.g. the mean
    angle of a zero normal vector): JSON has no NaN, and None reads as "undefined"."""
    number = scalar(value)
    return None if math.isnan(number) else number


def _clean(logs: Dict[str, object], prefix: str) -> Dict[str, Optional[float]]:
    return {key[len(prefix):]: defined(value) for key, value in logs.items() if key.startswith(prefix)}


class EpochEnd(keras.callbacks.Callback):
    """After every epoch: save a checkpoint (resume point); after evaluated epochs also
    compute Delta-MTL, keep the best model by it (or by the first task's primary metric
    when no STL reference is known), log scalars/images to TensorBoard and the history.

    Args:
        tasks: evaluated tasks.
        checkpoint: tf.train.Checkpoint holding the model, optimisers and `epoch`/`best`
            variables.
        manager, best_manager: CheckpointManagers for the latest and the best model.
        reference: STL values for Delta-MTL, or None.
        model_dir: where history.json goes.
        writer: tf.summary writer for the validation scalars and images (or None).
        image_batch: a fixed validation batch for prediction images (or None).
    """

    def __init__(self, tasks: Sequence[Task], checkpoint, manager, best_manager, reference,
                 model_dir: str, writer=None, image_batch=None):
        super().__init__()
        self.tasks = list(tasks)
        self.checkpoint = checkpoint
        self.manager = manager
        self.best_manager = best_manager
        self.reference = reference
        self.model_dir = model_dir
        self.writer = writer
        self.image_batch = image_batch
        self.history_path = os.path.join(model_dir, "history.json")
        self.history: List[Dict[str, object]] = _read_history(self.history_path)

    def selection_score(self, metrics: Dict[str, float]) -> Optional[float]:
        """Delta-MTL if a reference is known; else the first task's primary metric, signed."""
        if self.reference is not None:
            return delta_lib.compute(metrics, self.tasks, self.reference)
        task = self.tasks[0]
        value = metrics.get(f"{task.name}/{task.primary_metric}")
        if value is None:
            return None
        return value if task.metric_directions[task.primary_metric] == "higher" else -value

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.checkpoint.epoch.assign(epoch + 1)
        entry = {"epoch": epoch + 1, "train": _clean(logs, "")}
        entry["train"] = {k: v for k, v in entry["train"].items() if not k.startswith("val_")}
        val = _clean(logs, "val_")
        if val:
            entry["test"] = val
            entry["delta_mtl"] = delta_lib.compute(val, self.tasks, self.reference) if self.reference else None
            score = self.selection_score(val)
            if score is not None and score > float(self.checkpoint.best.numpy()):
                self.checkpoint.best.assign(score)
                self.best_manager.save(checkpoint_number=epoch + 1)
                entry["best"] = True
            self._summaries(epoch + 1, val, entry.get("delta_mtl"))
        _check_finite_weights(self.model, epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)
        self.history.append(entry)
        write_json_atomic(self.history_path, self.history)

    def _summaries(self, step: int, val: Dict[str, float], delta: Optional[float]) -> None:
        if self.writer is None:
            return
        with self.writer.as_default():
            for key, value in val.items():
                if value is not None:
                    tf.summary.scalar(f"test/{key}", value, step=step)
            if delta is not None:
                tf.summary.scalar("test/delta_mtl", delta, step=step)
            if self.image_batch is not None:
                self._images(step)
        self.writer.flush()

    def _images(self, step: int) -> None:
        batch = self.image_batch
        outputs = self.model.network(batch["image"], training=False)
        tf.summary.image("input", batch["image"], step=step, max_outputs=8)
        for task in self.tasks:
            panel = tf.concat([task.visualise(batch["labels"][task.name]),
                               task.visualise(outputs[task.name])], axis=2)
            tf.summary.image(f"{task.name}/label_vs_prediction", panel, step=step, max_outputs=8)


class NonFiniteGuard(keras.callbacks.Callback):
    """Warns about every skipped (non-finite) step and stops training with NonFiniteLossError
    after `max_consecutive` of them in a row. Reads the model's `nonfinite_steps` count."""

    def __init__(self, max_consecutive: int, key: str = "nonfinite_steps"):
        super().__init__()
        self.max_consecutive = max_consecutive
        self.key = key
        self.epoch = 0
        self.seen = 0.0
        self.streak = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.seen = epoch + 1, 0.0

    def on_train_batch_end(self, batch, logs=None):
        count = scalar((logs or {}).get(self.key, 0.0))
        if count <= self.seen + 0.5:
            self.streak = 0
            return
        self.seen, self.streak = count, self.streak + 1
        log.warning("epoch %d step %d skipped: its loss or a gradient is not finite (%d skipped this epoch, "
                    "%d in a row)", self.epoch, batch + 1, round(count), self.streak)
        if self.streak >= self.max_consecutive:
            means = ", ".join(f"{k}={scalar(v):.4g}" for k, v in sorted((logs or {}).items()) if k != self.key)
            raise NonFiniteLossError(
                f"training stopped at epoch {self.epoch}, step {batch + 1}: {self.streak} consecutive steps had a "
                f"non-finite loss or gradient and were skipped (--max_nonfinite_steps={self.max_consecutive}); "
                f"this epoch's mean losses over the applied steps: {means or 'none'}. Lower --learning_rate, "
                "check the data, or use --precision=float32")


class WeightingEpochEnd(keras.callbacks.Callback):
    """Hands each epoch's mean task losses to the loss weighting (`end_epoch`), before the
    epoch's checkpoint is written (list it before `EpochEnd`)."""

    def __init__(self, weighting):
        super().__init__()
        self.weighting = weighting

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        means = {n: scalar(logs[f"{n}_loss"]) for n in self.weighting.task_names if f"{n}_loss" in logs}
        self.weighting.end_epoch(epoch + 1, means)


def _check_finite_weights(model, epoch: int) -> None:
    """Raises NonFiniteLossError naming the first non-finite variable (never checkpointed)."""
    for variable in model.weights:
        if tf.as_dtype(variable.dtype).is_floating and not bool(tf.reduce_all(tf.math.is_finite(variable))):
            raise NonFiniteLossError(f"after epoch {epoch} the variable {variable.path} is not finite; "
                                     "not checkpointed. Lower --learning_rate or check the data")


class WeightSummaries(keras.callbacks.Callback):
    """Writes the loss weighting's weights of every training step ("weight/<task>" in the
    step's logs) to TensorBoard, at the global step (epoch * steps_per_epoch + batch + 1)."""

    def __init__(self, writer, steps_per_epoch: int):
        super().__init__()
        self.writer = writer
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step = self.epoch * self.steps_per_epoch + batch + 1
        with self.writer.as_default():
            for key, value in (logs or {}).items():
                if key.startswith("weight/"):
                    tf.summary.scalar(key, float(value), step=step)


def _read_history(path: str) -> List[Dict[str, object]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)
