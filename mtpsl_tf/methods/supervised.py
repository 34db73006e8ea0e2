"""Supervised objectives: `sl` (multi-task, masked per image) and `stl` (one task)."""

from __future__ import annotations

from typing import Dict, List, Sequence

import tensorflow as tf

from mtpsl_tf.methods.base import METHODS, LossTerms, Method, presence, replica_sum
from mtpsl_tf.methods.facts import resolve_reduction  # noqa: F401  (re-exported)
from mtpsl_tf.tasks.base import Task, safe_ratio
from mtpsl_tf.weighting.base import weighted_total


def masked_task_loss(task: Task, pred, label, mask, global_batch_size: int, reduction: str) -> tf.Tensor:
    """This replica's share of one task's loss over the global batch.

    per_image: sum_n mask_n * L(n) / B (SPEC section 3; an unlabelled image adds 0 and
    still counts in B). batch: sum over labelled images' pixels / their valid pixels,
    pooled over the global batch (the reference's full-label `model_fit`).
    """
    total, count = task.loss_terms(pred, label)
    mask = tf.cast(mask, tf.float32)
    if reduction == "per_image":
        return tf.reduce_sum(mask * safe_ratio(total, count)) / float(global_batch_size)
    if reduction == "batch":
        global_count = replica_sum(tf.reduce_sum(mask * count))
        return safe_ratio(tf.reduce_sum(mask * total), global_count)
    raise ValueError(f"unknown loss reduction {reduction!r}; expected per_image or batch")


def supervised_losses(tasks: Sequence[Task], outputs, labels, masks, global_batch_size: int,
                      reduction: str) -> Dict[str, tf.Tensor]:
    """Named per-task losses `{"<task>_loss": scalar}` for the given tasks."""
    losses = task_losses(tasks, outputs, labels, masks, global_batch_size, reduction)
    return {f"{name}_loss": value for name, value in losses.items()}


def task_losses(tasks: Sequence[Task], outputs, labels, masks, global_batch_size: int,
                reduction: str) -> Dict[str, tf.Tensor]:
    """task name -> its masked loss (`masked_task_loss`), in task order."""
    return {t.name: masked_task_loss(t, outputs[t.name], labels[t.name], masks[t.name], global_batch_size,
                                     reduction) for t in tasks}


def weighted_sum(parts: Dict[str, tf.Tensor], weights: Dict[str, float]) -> tf.Tensor:
    """sum_t w_t * parts["<t>_loss"] for the tasks of `weights` (the named parts stay unweighted)."""
    return weighted_total({name: parts[f"{name}_loss"] for name in weights}, weights)


@METHODS.register("sl")
class SupervisedLearning(Method):
    """MTL supervised learning (SPEC section 3): masked per-task losses, combined by the weighting."""

    def loss_terms(self, network, batch, global_batch_size, progress, step):
        outputs = network(batch["image"], training=True)
        losses = task_losses(self.tasks, outputs, batch["labels"], batch["label_mask"], global_batch_size,
                             self.facts.loss_reduction)
        return LossTerms(losses, presence(self.tasks, batch["label_mask"]))


@METHODS.register("stl")
class SingleTaskLearning(SupervisedLearning):
    """One network for one task (`--stl_task`), trained on the images labelled for it."""

    def select_tasks(self, tasks: List[Task]) -> List[Task]:
        names = [t.name for t in tasks]
        if self.facts.stl_task not in names:
            raise ValueError(f"--method=stl needs --stl_task set to one of {names}, got {self.facts.stl_task!r}")
        return [t for t in tasks if t.name == self.facts.stl_task]

    def static_weights(self) -> Dict[str, float]:
        # A single-task network's loss is unweighted (Multi-Task-Learning-PyTorch's
        # SingleTaskLoss); only an explicit --loss_weights entry changes it.
        wanted = self.facts.stl_task
        return {wanted: float(self.facts.explicit_loss_weights.get(wanted, 1.0))}
