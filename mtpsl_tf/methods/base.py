"""The training-objective interface and the methods registry.

A method turns a batch into named loss terms (`LossTerms`): one supervised loss per task it
trains, and extra terms with their weights (e.g. MTPSL's consistency). The loss weighting
(mtpsl_tf/weighting/) combines the task losses; every method composes with every weighting.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Dict, List

import tensorflow as tf

from mtpsl_tf.distribute import replica_sum  # noqa: F401  (re-exported)
from mtpsl_tf.methods.facts import MethodFacts, resolve_facts, resolve_loss_weights  # noqa: F401
from mtpsl_tf.options import NoOptions
from mtpsl_tf.registry import Registry
from mtpsl_tf.tasks.base import Task
from mtpsl_tf.weighting.base import WEIGHTINGS, WeightingFacts

# One line per method module (see mtpsl_tf/registry.py).
METHODS: Registry = Registry("method", modules=(
    "mtpsl_tf.methods.supervised",
    "mtpsl_tf.methods.mtpsl",
    "mtpsl_tf.methods.joint_space.contrastive",
    "mtpsl_tf.methods.joint_space.discriminator",
    "mtpsl_tf.methods.ssl",
    "mtpsl_tf.methods.cross_task.direct",
    "mtpsl_tf.methods.cross_task.perceptual",
    "mtpsl_tf.methods.cross_task.xtask",
))

# The help of --remat_mapping, an option of every method with mapping networks (one flag).
REMAT_MAPPING_HELP = ("mtpsl and its baselines with mapping networks (contrastive, discriminator, direct_map, "
                      "perceptual_map, xtask): recompute the mapping networks' activations in the backward pass "
                      "instead of keeping them (less memory, one more forward pass of the mappings per step).")


@dataclasses.dataclass
class LossTerms:
    """One step's loss terms (each replica's share of the global-batch value).

    Attributes:
        tasks: task name -> supervised loss, in task order (combined by the weighting).
        present: task name -> bool scalar: the task has a labelled image in the global batch.
        extra: name -> other term, unweighted (logged as it is), e.g. "consistency".
        extra_weights: name -> the weight (float or scalar tensor) of each extra term in the total.
    """

    tasks: Dict[str, tf.Tensor]
    present: Dict[str, tf.Tensor]
    extra: Dict[str, tf.Tensor] = dataclasses.field(default_factory=dict)
    extra_weights: Dict[str, object] = dataclasses.field(default_factory=dict)


def presence(tasks, label_mask) -> Dict[str, tf.Tensor]:
    """task name -> bool scalar: some image of the GLOBAL batch is labelled for the task."""
    names = [t.name for t in tasks]
    counts = replica_sum(tf.stack([tf.reduce_sum(tf.cast(label_mask[n], tf.float32)) for n in names]))
    return {n: counts[i] > 0 for i, n in enumerate(names)}


def two_view_outputs(network, batch, method_name: str):
    """(view-1 outputs, view-2 outputs): both views of the local batch through `network` in ONE
    call of 2B images (so BatchNorm sees both, as the reference); dicts task -> `[B, ...]`."""
    local = batch["image"].shape[0]
    if local is None:
        raise ValueError(f"{method_name} needs a static per-replica batch size (batch with drop_remainder)")
    outputs = network(tf.concat([batch["image"], batch["image_aug"]], axis=0), training=True)
    return {k: v[:local] for k, v in outputs.items()}, {k: v[local:] for k, v in outputs.items()}


class Method(abc.ABC):
    """A training objective: turns network outputs, labels and masks into named losses.

    Losses are each replica's share of the global-batch loss (local sums divided by the
    GLOBAL batch size), so summing gradients over replicas gives the single-device gradient.

    Args:
        facts: the resolved `MethodFacts` (or, for convenience, an ExperimentConfig followed
            by the dataset's tasks, resolved with `resolve_facts`).

    Attributes:
        Options: the dataclass of the method's own flags (mtpsl_tf/options.py).
        two_views: the input pipeline must provide `image_aug` / `labels_aug`.
        align_views: (with two_views) the batch must also hold "view_transform" `[B, 6]`, where
            each view-2 pixel lies in view 1 (mtpsl_tf/data/alignment.py).
        tasks: the tasks the method supervises (and the network predicts).
        loss_weights: task -> static weight handed to the weighting.
        weighting: the LossWeighting combining the task losses.
    """

    Options = NoOptions
    two_views = False
    align_views = False

    def __init__(self, facts: MethodFacts, tasks=None):
        if tasks is not None:
            facts = resolve_facts(facts, tasks)
        self.facts = facts
        self.options = facts.options
        self.tasks = self.select_tasks(list(facts.tasks))
        self.loss_weights = self.static_weights()
        self.weighting = WEIGHTINGS.get(facts.weighting)(WeightingFacts(
            task_names=tuple(t.name for t in self.tasks), static_weights=self.loss_weights,
            seed=facts.seed, options=facts.weighting_options))

    # ------------------------------------------------------------------ what it trains
    def select_tasks(self, tasks: List[Task]) -> List[Task]:
        """The tasks this method trains, from the dataset's (stl: one)."""
        return tasks

    def static_weights(self) -> Dict[str, float]:
        """task -> static loss weight for the weighting (default: the resolved facts')."""
        return {t.name: float(self.facts.loss_weights.get(t.name, 1.0)) for t in self.tasks}

    def network_tasks(self) -> List[Task]:
        """The tasks the network predicts."""
        return self.tasks

    # ------------------------------------------------------------------ parts
    def extra_optimizers(self, steps_per_epoch: int) -> Dict[str, object]:
        """Optimisers of the variable groups other than "main" (the method's and the weighting's)."""
        optimizer = self.weighting.make_optimizer(steps_per_epoch)
        return {} if optimizer is None else {self.weighting.optimizer_group: optimizer}

    def build(self, network) -> None:
        """Creates extra trainable parts (e.g. a mapping network) and the weighting's variables."""
        self.weighting.build()

    def extra_layers(self) -> list:
        """Keras layers the method trains besides the network (tracked for checkpoints)."""
        return []

    def variable_groups(self, network) -> Dict[str, list]:
        """Optimiser group name -> trainable variables. The "main" group always exists."""
        variables = list(network.trainable_variables)
        for layer in self.extra_layers():
            variables += layer.trainable_variables
        return self._with_weighting({"main": variables})

    def _with_weighting(self, groups: Dict[str, list]) -> Dict[str, list]:
        own = self.weighting.trainable_variables()
        if own:
            groups.setdefault(self.weighting.optimizer_group, [])
            groups[self.weighting.optimizer_group] = groups[self.weighting.optimizer_group] + list(own)
        return groups

    def extra_loss_names(self) -> List[str]:
        """Names of the extra terms `loss_terms` returns."""
        return []

    def loss_names(self) -> List[str]:
        """Names of the scalars `losses` returns (fixed, so trackers exist before tracing)."""
        return [f"{t.name}_loss" for t in self.tasks] + self.extra_loss_names() + ["total"]

    def after_update(self) -> None:
        """Runs in the training step after the optimisers applied the gradients (e.g. to
        re-normalise or clip the method's own variables); default: the weighting's hook."""
        self.weighting.after_update()

    # ------------------------------------------------------------------ the loss
    @abc.abstractmethod
    def loss_terms(self, network, batch: Dict[str, object], global_batch_size: int, progress: tf.Tensor,
                   step: tf.Tensor) -> LossTerms:
        """Runs the network on the batch; returns the step's LossTerms.

        `progress` is the fractional epoch (float32 scalar) for ramp-ups; `step` the optimiser
        step (int64), e.g. to derive stateless random seeds.
        """

    def total(self, terms: LossTerms) -> tf.Tensor:
        """The weighting's combination of the task losses plus the weighted extra terms."""
        total = self.weighting.combine(terms.tasks, terms.present)
        extra = self.extra_total(terms)
        return total if extra is None else total + extra

    def extra_total(self, terms: LossTerms):
        """sum of the weighted extra terms (None when there are none)."""
        total = None
        for name, value in terms.extra.items():
            term = terms.extra_weights[name] * value
            total = term if total is None else total + term
        return total

    def losses(self, network, batch, global_batch_size: int, progress, step) -> Dict[str, tf.Tensor]:
        """Named scalar losses `{"<task>_loss", extra terms..., "total"}` of one step."""
        terms = self.loss_terms(network, batch, global_batch_size, progress, step)
        parts = {f"{name}_loss": value for name, value in terms.tasks.items()}
        parts.update(terms.extra)
        parts["total"] = self.total(terms)
        return parts
