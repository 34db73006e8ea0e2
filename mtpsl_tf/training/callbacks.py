"""Callbacks: per-epoch checkpoint + resume state, Delta-MTL model selection, TensorBoard."""

from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from mtpsl_tf.tasks.base import Task
from mtpsl_tf.training import delta as delta_lib


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


def _clean(logs: Dict[str, object], prefix: str) -> Dict[str, float]:
    out = {}
    for key, value in logs.items():
        if key.startswith(prefix):
            number = float(value)
            out[key[len(prefix):]] = None if math.isnan(number) else number
    return out


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


class WeightingEpochEnd(keras.callbacks.Callback):
    """Hands each epoch's mean task losses to the loss weighting (`end_epoch`), before the
    epoch's checkpoint is written (list it before `EpochEnd`)."""

    def __init__(self, weighting):
        super().__init__()
        self.weighting = weighting

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        means = {n: float(logs[f"{n}_loss"]) for n in self.weighting.task_names if f"{n}_loss" in logs}
        self.weighting.end_epoch(epoch + 1, means)


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
