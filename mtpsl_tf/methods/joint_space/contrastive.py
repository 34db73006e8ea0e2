"""`--method=contrastive` (Contrastive-Loss, supplement Tab. 3, 5-7): MTPSL's joint pairwise
space with InfoNCE instead of the cosine alignment; negatives from the GLOBAL batch."""

from __future__ import annotations

import dataclasses
from typing import List

import tensorflow as tf

from mtpsl_tf.distribute import replica_gather, replica_index
from mtpsl_tf.methods.base import METHODS
from mtpsl_tf.methods.joint_space.infonce import POOLINGS, info_nce, negatives_mask, pool_embeddings
from mtpsl_tf.methods.mtpsl.compact import per_image_sum
from mtpsl_tf.methods.mtpsl.consistency import feature_regulariser
from mtpsl_tf.methods.mtpsl.method import MTPSL, MTPSLOptions
from mtpsl_tf.options import choice, option


@dataclasses.dataclass(frozen=True)
class ContrastiveOptions(MTPSLOptions):
    """The flags of `--method=contrastive` (MTPSL's, whose con_weight weighs the InfoNCE term)."""

    temperature: float = option(0.1, "contrastive: InfoNCE temperature tau (cosine / tau).")
    contrastive_pooling: str = option(
        "mean", "contrastive: embedding [h,w,C] -> vector: mean (over positions) or flatten.")
    contrastive_negatives: str = option(
        "same_pair", "contrastive: negatives are other images' label embeddings of the same task pair "
        "(same_pair) or of any pair (any_pair).")
    contrastive_scope: str = option(
        "global", "contrastive: negatives from the global batch (all replicas, all-gathered) or only this "
        "replica's share (replica).")

    def validate(self) -> None:
        super().validate()
        choice("contrastive_pooling", self.contrastive_pooling, POOLINGS)
        choice("contrastive_negatives", self.contrastive_negatives, ("same_pair", "any_pair"))
        choice("contrastive_scope", self.contrastive_scope, ("global", "replica"))
        if not self.temperature > 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")


@METHODS.register("contrastive")
class ContrastiveLoss(MTPSL):
    """Supervised losses + con_weight * sum over active (image, pair) items of
    [InfoNCE(pooled e_s vs pooled e_t, other images' e_t as negatives) + reg_weight * reg] / B.

    The active items, the mapping net, its FiLM optimiser and the feature regulariser are
    MTPSL's (`--consistency_mode` etc.); only the alignment term differs.
    """

    Options = ContrastiveOptions
    flag_name = "contrastive"
    chunked_mapping = False

    def extra_loss_names(self) -> List[str]:
        return ["contrastive"]

    def joint_space_terms(self, view2, batch, global_batch_size, progress, step):
        o = self.options
        items = self.active_items(view2, batch, step)
        local = batch["image"].shape[0]
        anchors = pool_embeddings(items.source, o.contrastive_pooling)
        targets = pool_embeddings(items.target, o.contrastive_pooling)
        capacity = items.image.shape[0]
        gather = replica_gather if o.contrastive_scope == "global" else (lambda x: x)
        replica = replica_index() if o.contrastive_scope == "global" else tf.constant(0, tf.int32)
        image = items.image + replica * local  # image number in the global batch
        positive = replica * capacity + tf.range(capacity, dtype=tf.int32)
        allowed = negatives_mask(image, items.pair, gather(image), gather(items.pair), gather(items.valid),
                                 positive, same_pair=o.contrastive_negatives == "same_pair")
        nce = info_nce(anchors, gather(targets), positive, allowed, o.temperature)
        item = nce + o.reg_weight * tf.cast(feature_regulariser(items.source, items.target, items.feature),
                                            tf.float32)
        loss = tf.reduce_sum(per_image_sum(item, items, local)) / float(global_batch_size)
        return {"contrastive": loss}, {"contrastive": self.con_weight(progress)}
