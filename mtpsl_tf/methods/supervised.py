"""Supervised objectives: `sl` (multi-task, masked per image) and `stl` (one task)."""

from __future__ import annotations

from typing import Dict, List, Sequence

import tensorflow as tf

from mtpsl_tf.methods.base import METHODS, Method, replica_sum, resolve_loss_weights
from mtpsl_tf.tasks.base import Task, safe_ratio


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
    return {f"{t.name}_loss": masked_task_loss(t, outputs[t.name], labels[t.name], masks[t.name],
                                               global_batch_size, reduction) for t in tasks}


def weighted_sum(parts: Dict[str, tf.Tensor], weights: Dict[str, float]) -> tf.Tensor:
    """sum_t w_t * parts["<t>_loss"] (the named parts stay unweighted, for monitoring)."""
    terms = []
    for name, weight in weights.items():
        value = parts[f"{name}_loss"]
        terms.append(value if weight == 1.0 else weight * value)
    return tf.add_n(terms)


def resolve_reduction(config) -> str:
    if config.method.loss_reduction != "auto":
        return config.method.loss_reduction
    return "batch" if config.data.setting == "full" and config.method.method == "sl" else "per_image"


@METHODS.register("sl")
class SupervisedLearning(Method):
    """MTL supervised learning (SPEC section 3): masked per-task losses, summed."""

    def losses(self, network, batch, global_batch_size, progress, step):
        outputs = network(batch["image"], training=True)
        parts = supervised_losses(self.tasks, outputs, batch["labels"], batch["label_mask"],
                                  global_batch_size, resolve_reduction(self.config))
        parts["total"] = weighted_sum(parts, self.loss_weights)
        return parts


@METHODS.register("stl")
class SingleTaskLearning(SupervisedLearning):
    """One network for one task (`--stl_task`), trained on the images labelled for it."""

    def __init__(self, config, tasks):
        names = [t.name for t in tasks]
        wanted = config.method.stl_task
        if wanted not in names:
            raise ValueError(f"--method=stl needs --stl_task set to one of {names}, got {wanted!r}")
        resolve_loss_weights(config, tasks)  # validates --loss_weights against all tasks
        # A single-task network's loss is unweighted (Multi-Task-Learning-PyTorch's
        # SingleTaskLoss); only an explicit --loss_weights entry changes it.
        weights = {wanted: config.loss_weight_overrides().get(wanted, 1.0)}
        super().__init__(config, [t for t in tasks if t.name == wanted], loss_weights=weights)

    def network_tasks(self) -> List[Task]:
        return self.tasks
