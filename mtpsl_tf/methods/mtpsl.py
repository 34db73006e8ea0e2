"""The paper's method: supervised losses + joint pairwise task-space consistency (SPEC 5)."""

from __future__ import annotations

from typing import Dict, List

import keras
import numpy as np
import tensorflow as tf

from mtpsl_tf.methods.base import METHODS, Method
from mtpsl_tf.methods.consistency_compact import consistency_loss_compact, max_active_pairs
from mtpsl_tf.methods.supervised import supervised_losses, weighted_sum
from mtpsl_tf.models.mapping import MappingNet
from mtpsl_tf.training.schedules import StepDecay

RAMP_EPOCHS = 100  # the reference's linear ramp-up length


def resolve_mode(config) -> str:
    mode = config.method.consistency_mode
    if mode != "auto":
        return mode
    return "full" if config.data.setting == "full" else "mtpsl"


@METHODS.register("mtpsl")
class MTPSL(Method):
    """Ours / Ours+ / full-supervision consistency, chosen by `--consistency_mode`.

    Each step feeds both views (2B images) through the network in one batch; the supervised
    loss (per image, masked) uses view 1, the consistency loss view 2's predictions, labels
    and shared feature. Total = sum_n [sum_{t labelled} L_t(n) + w * sum_pairs L(s,t)] / B.
    The mapping net's FiLM tables have their own Adam (`--film_learning_rate`, halved every
    `--film_lr_decay_epochs`); everything else uses the main optimiser.
    """

    two_views = True

    def __init__(self, config, tasks):
        if config.model.backbone != "segnet":
            raise ValueError(
                f"--method=mtpsl with --backbone={config.model.backbone}: the mapping network is the "
                "SegNet encoder, so only --backbone=segnet is supported (the paper's ResNet-18 mapping "
                "for PASCAL-Context is not implemented yet)")
        super().__init__(config, tasks)
        self.mode = resolve_mode(config)
        self.labelled_counts: List[int] | None = None
        self.mapping: MappingNet | None = None

    def observe_label_masks(self, masks) -> None:
        self.labelled_counts = sorted({int(k) for k in np.asarray(masks).sum(axis=1)})

    def build(self, network) -> None:
        filters = list(getattr(network, "filters"))
        self.mapping = MappingNet([t.name for t in self.tasks], [t.channels for t in self.tasks],
                                  filters=filters, name="mapping")

    def extra_layers(self) -> list:
        return [self.mapping]

    def variable_groups(self, network) -> Dict[str, list]:
        return {"main": list(network.trainable_variables) + self.mapping.non_film_trainable_variables,
                "film": self.mapping.film_variables}

    def extra_optimizers(self, steps_per_epoch: int) -> Dict[str, object]:
        m = self.config.method
        lr = StepDecay(m.film_learning_rate, steps_per_epoch, m.film_lr_decay_epochs, 0.5)
        return {"film": keras.optimizers.Adam(learning_rate=lr, beta_1=0.9, beta_2=0.999, epsilon=1e-8)}

    def loss_names(self) -> List[str]:
        return [f"{t.name}_loss" for t in self.tasks] + ["consistency", "total"]

    def capacity(self, local_batch: int) -> int:
        return local_batch * max_active_pairs(len(self.tasks), self.mode, self.labelled_counts)

    def con_weight(self, progress: tf.Tensor) -> tf.Tensor:
        weight = tf.constant(self.config.method.con_weight, tf.float32)
        if self.config.method.rampup == "up":
            weight *= tf.minimum(progress / RAMP_EPOCHS, 1.0)
        return weight

    def losses(self, network, batch, global_batch_size, progress, step):
        local = batch["image"].shape[0]
        if local is None:
            raise ValueError("mtpsl needs a static per-replica batch size (batch with drop_remainder)")
        outputs = network(tf.concat([batch["image"], batch["image_aug"]], axis=0), training=True)
        view1 = {k: v[:local] for k, v in outputs.items()}
        view2 = {k: v[local:] for k, v in outputs.items()}
        parts = supervised_losses(self.tasks, view1, batch["labels"], batch["label_mask"], global_batch_size,
                                  "per_image")
        seed = self._seed(step)
        per_image = consistency_loss_compact(
            self.mapping, view2, batch["labels_aug"], view2["feature"], batch["label_mask"], self.mode,
            capacity=self.capacity(local), seed=seed, reg_weight=self.config.method.reg_weight, training=True)
        parts["consistency"] = tf.reduce_sum(per_image) / float(global_batch_size)
        parts["total"] = weighted_sum(parts, self.loss_weights) + \
            self.con_weight(progress) * parts["consistency"]
        return parts

    def _seed(self, step) -> tf.Tensor:
        """Stateless Gumbel seed from (train seed, step, replica): fresh noise every step and
        replica, reproducible across resumes."""
        ctx = tf.distribute.get_replica_context()
        replica = ctx.replica_id_in_sync_group if ctx is not None else 0
        base = tf.stack([tf.constant(self.config.train.seed, tf.int64), tf.cast(step, tf.int64)])
        return tf.random.experimental.stateless_fold_in(base, tf.cast(replica, tf.int64))
