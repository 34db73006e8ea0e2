"""The training-objective interface and the methods registry."""

from __future__ import annotations

import abc
from typing import Dict, List, Sequence

import tensorflow as tf

from mtpsl_tf.registry import Registry
from mtpsl_tf.tasks.base import Task

METHODS: Registry = Registry("method")


def replica_sum(value: tf.Tensor) -> tf.Tensor:
    """Sums `value` over replicas when called inside a replica context, else returns it."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or tf.distribute.get_strategy().num_replicas_in_sync == 1:
        return value
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)


def resolve_loss_weights(config, tasks: Sequence[Task]) -> Dict[str, float]:
    """Task name -> fixed loss weight: `--loss_weights`, else the dataset's defaults, else 1.

    Raises:
        ValueError: naming `--loss_weights` when it names a task the run does not have.
    """
    from mtpsl_tf.data.registry import DATASETS  # deferred: data imports tasks, not methods

    names = [t.name for t in tasks]
    defaults = {}
    if config.data.dataset in DATASETS:
        defaults = dict(getattr(DATASETS.get(config.data.dataset), "loss_weights", {}) or {})
    overrides = config.loss_weight_overrides()
    unknown = sorted(set(overrides) - set(defaults) - set(names))
    if unknown:
        raise ValueError(f"--loss_weights names unknown tasks {unknown}; the tasks are {names}")
    return {n: float(overrides.get(n, defaults.get(n, 1.0))) for n in names}


class Method(abc.ABC):
    """A training objective: turns network outputs, labels and masks into named losses.

    Losses returned by `losses` are each replica's share of the global-batch loss (local
    sums divided by the GLOBAL batch size), so summing gradients over replicas gives the
    single-device gradient.

    Attributes:
        two_views: the input pipeline must provide `image_aug` / `labels_aug`.
    """

    two_views = False

    def __init__(self, config, tasks: Sequence[Task], loss_weights: Dict[str, float] | None = None):
        self.config = config
        self.tasks = list(tasks)
        self.loss_weights = resolve_loss_weights(config, self.tasks) if loss_weights is None else loss_weights

    def network_tasks(self) -> List[Task]:
        """The tasks the network predicts (stl: one)."""
        return self.tasks

    def observe_label_masks(self, masks) -> None:
        """Sees the training set's label masks `[N, T]` before training (e.g. to size buffers)."""

    def extra_optimizers(self, steps_per_epoch: int) -> Dict[str, object]:
        """Optimisers of the variable groups other than "main"."""
        return {}

    def build(self, network) -> None:
        """Creates extra trainable parts (e.g. a mapping network); default none."""

    def extra_layers(self) -> list:
        """Keras layers the method trains besides the network (tracked for checkpoints)."""
        return []

    def variable_groups(self, network) -> Dict[str, list]:
        """Optimiser group name -> trainable variables. The "main" group always exists."""
        variables = list(network.trainable_variables)
        for layer in self.extra_layers():
            variables += layer.trainable_variables
        return {"main": variables}

    def loss_names(self) -> List[str]:
        """Names of the scalars `losses` returns (fixed, so trackers exist before tracing)."""
        return [f"{t.name}_loss" for t in self.network_tasks()] + ["total"]

    @abc.abstractmethod
    def losses(self, network, batch: Dict[str, object], global_batch_size: int, progress: tf.Tensor,
               step: tf.Tensor) -> Dict[str, tf.Tensor]:
        """Runs the network on the batch; returns named scalar losses incl. "total".

        `progress` is the fractional epoch (float32 scalar) for ramp-ups; `step` the optimiser
        step (int64), e.g. to derive stateless random seeds.
        """
