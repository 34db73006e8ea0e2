"""The loss-weighting interface and its registry.

A weighting sees, each step, the per-task losses of the method (each replica's share of the
global-batch loss, see `Method`) and which tasks have a labelled image in the global batch.
It returns the total to differentiate; a gradient-based weighting (GradNorm, MGDA, PCGrad)
also asks `train_step` for the per-task gradients of the shared parameters
(`gradient_source = SHARED_PARAMETERS`) and combines them itself, or for the per-task
gradients of the shared representation (`SHARED_FEATURE`, MGDA-UB) from which it decides
the weights of its `combine`. It may own variables (with
their own optimiser group, e.g. learned log-variances) and state updated once per epoch from
the logged losses (DWA); both are checkpointed, so resume is exact.

Partial labels: a task with no labelled image in the batch has loss 0 and `present` False;
a weighting must give it no weight in any normalisation and must not update its state from
that step (each subclass states how in its docstring).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Sequence

import tensorflow as tf

from mtpsl_tf.options import NoOptions
from mtpsl_tf.registry import Registry

# One line per weighting module (see mtpsl_tf/registry.py).
WEIGHTINGS: Registry = Registry("loss weighting", modules=(
    "mtpsl_tf.weighting.fixed",
    "mtpsl_tf.weighting.uncertainty",
    "mtpsl_tf.weighting.dwa",
    "mtpsl_tf.weighting.gradnorm",
    "mtpsl_tf.weighting.mgda",
    "mtpsl_tf.weighting.pcgrad",
    "mtpsl_tf.weighting.cagrad",
    "mtpsl_tf.weighting.famo",
))

TOTAL = "total"  # differentiate the combined total once (no per-task gradients)
SHARED_PARAMETERS = "shared_parameters"  # per-task gradients of the network's shared variables
# Per-task gradients of the backbone's shared representation (the tensor every head reads,
# `Backbone.shared_output`): MGDA-UB's one cheap gradient per task.
SHARED_FEATURE = "shared_feature"


@dataclasses.dataclass(frozen=True)
class WeightingFacts:
    """What a weighting is built from.

    Attributes:
        task_names: the supervised tasks, in the dataset's order.
        static_weights: task -> fixed weight (`--loss_weights`, else the dataset's, else 1).
        seed: the run's seed.
        options: the weighting's `Options` instance.
    """

    task_names: tuple
    static_weights: Mapping[str, float]
    seed: int = 0
    options: object = dataclasses.field(default_factory=NoOptions)


class LossWeighting:
    """Combines named task losses into the total.

    Subclasses implement `combine` (and, with `gradient_source = SHARED_PARAMETERS`,
    `combine_gradients`); the other hooks have neutral defaults.
    """

    Options = NoOptions
    gradient_source = TOTAL
    # False: the weights change during training and are logged ("weight/<task>" per step
    # and per epoch); `fixed` leaves the logs as they were.
    constant_weights = False

    def __init__(self, facts: WeightingFacts):
        self.task_names = list(facts.task_names)
        self.static_weights = {n: float(facts.static_weights.get(n, 1.0)) for n in self.task_names}
        self.seed = facts.seed
        self.options = facts.options

    # ------------------------------------------------------------------ variables / state
    def build(self) -> None:
        """Creates the weighting's variables (called inside the strategy scope)."""

    def trainable_variables(self) -> List[tf.Variable]:
        """Variables trained by the optimiser group `optimizer_group` (e.g. log-variances)."""
        return []

    optimizer_group = "main"  # the group whose optimiser trains `trainable_variables`

    def make_optimizer(self, steps_per_epoch: int):
        """An optimiser for a group of its own, or None to use "main"."""
        return None

    def state(self) -> Dict[str, tf.Variable]:
        """Variables to checkpoint besides the trainable ones (e.g. DWA's loss history)."""
        return {}

    # ------------------------------------------------------------------ per step
    def combine(self, losses: Mapping[str, tf.Tensor], present: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """The total to differentiate from `losses` (task -> scalar) and `present` (task ->
        bool scalar: the task has a labelled image in the global batch). Default: the static
        weighted sum (`fixed`; gradient-based weightings give it to the task heads). An absent
        task's loss is 0, so it adds nothing."""
        del present
        return weighted_total(losses, self.static_weights)

    def combine_gradients(self, task_gradients: Mapping[str, Sequence[tf.Tensor]],
                          losses: Mapping[str, tf.Tensor], present: Mapping[str, tf.Tensor]) -> List[tf.Tensor]:
        """SHARED_PARAMETERS weightings: the shared variables' gradient from each task's
        gradient of them (task -> list aligned with the shared variables, None-free)."""
        raise NotImplementedError

    def observe_feature_gradients(self, feature_gradients: Mapping[str, Sequence[tf.Tensor]],
                                  losses: Mapping[str, tf.Tensor], present: Mapping[str, tf.Tensor]) -> None:
        """SHARED_FEATURE weightings: each task's gradient of this replica's shared
        representation (task -> one tensor `[B_call, ...]` per network call of the step, zeros
        where the task's loss does not reach it), given before `combine`, which then applies
        the weights decided here."""
        raise NotImplementedError

    def variable_gradients(self, task_gradients: Mapping[str, Sequence[tf.Tensor]],
                           losses: Mapping[str, tf.Tensor], present: Mapping[str, tf.Tensor],
                           last_shared: int):
        """SHARED_PARAMETERS weightings whose variables follow a loss of their own (GradNorm):
        the gradients of `trainable_variables()` (same order) that replace the tape's
        gradient of the total, computed from the same (possibly loss-scaled) task gradients;
        None keeps the tape's. `last_shared` is the index, in the task-gradient lists, of the
        backbone's `last_shared_kernel()`. Called after `combine_gradients`."""
        return None

    def after_update(self) -> None:
        """Runs in the training step after the gradients were applied (e.g. GradNorm's
        renormalisation of its weights); default nothing."""
        return None  # a body besides the docstring: AutoGraph cannot convert an empty one

    def weights(self) -> Dict[str, tf.Tensor]:
        """task -> the weight currently applied (logged per step and per epoch)."""
        return {n: tf.constant(w, tf.float32) for n, w in self.static_weights.items()}

    # ------------------------------------------------------------------ per epoch
    def end_epoch(self, epoch: int, mean_losses: Mapping[str, float]) -> None:
        """After epoch `epoch` (1-based), with each task's mean training loss of that epoch."""


def weighted_total(losses: Mapping[str, tf.Tensor], weights: Mapping[str, float]) -> tf.Tensor:
    """sum_t w_t * losses[t] (a weight of exactly 1 adds the loss itself)."""
    terms = [value if weights[name] == 1.0 else weights[name] * value for name, value in losses.items()]
    return tf.add_n(terms)
