"""The paper's method: supervised losses + joint pairwise task-space consistency (SPEC 5)."""

from __future__ import annotations

import dataclasses
from typing import Dict, List

import keras
import tensorflow as tf

from mtpsl_tf.methods.base import METHODS, REMAT_MAPPING_HELP, LossTerms, Method, presence, two_view_outputs
from mtpsl_tf.methods.mtpsl.chunked import check_precision, consistency_sum
from mtpsl_tf.methods.mtpsl.compact import ActiveItems, embed_active_items
from mtpsl_tf.methods.mtpsl.encoders import MAPPING_ENCODERS
from mtpsl_tf.methods.mtpsl.mapping import MappingNet
from mtpsl_tf.methods.mtpsl.pairs import MODES, max_active_pairs
from mtpsl_tf.methods.supervised import task_losses
from mtpsl_tf.optim.schedules import StepDecay
from mtpsl_tf.options import choice, option

RAMP_EPOCHS = 100  # the reference's linear ramp-up length
# --consistency_mode=auto per label-setting kind (others: mtpsl). With all-or-nothing labels
# (ssl) no image has an unlabelled source AND a labelled target: see docs/BASELINES.md.
AUTO_MODES = {"full": "full", "ssl": "mtpsl_plus"}


@dataclasses.dataclass(frozen=True)
class MTPSLOptions:
    """The flags of `--method=mtpsl`."""

    consistency_mode: str = option(
        "auto", "mtpsl: unlabelled source -> labelled target pairs; mtpsl_plus (Ours+): also labelled "
        "sources; full: all ordered pairs; auto: full for --setting=full, mtpsl_plus for --setting=ssl=..., "
        "else mtpsl.")
    con_weight: float = option(2.0, "mtpsl: weight of the consistency loss (paper: 2.0 NYU-v2, 1.0 Cityscapes).")
    reg_weight: float = option(0.5, "mtpsl: weight of the feature regulariser inside each pair loss.")
    rampup: str = option("fixed", "mtpsl: fixed, or up (linear ramp of con_weight over the first 100 epochs).")
    film_learning_rate: float = option(1e-3, "mtpsl: Adam lr of the FiLM tables (paper: 1e-3 NYU-v2, 1e-5 Cityscapes).")
    film_lr_decay_epochs: int = option(30, "mtpsl: halve the FiLM learning rate every this many epochs.")
    remat_mapping: bool = option(False, REMAT_MAPPING_HELP)
    mapping_chunks: int = option(
        1, "mtpsl: run the mapping net over the active items in this many groups, each group's backward "
        "pass right after its forward pass, so one group's activations are alive at a time (less memory, "
        "same values and cost; docs/MEMORY.md). 1: all items in one call.")
    skip_unannotated_targets: bool = option(
        True, "mtpsl: leave out pairs whose target label has no valid pixel (e.g. PASCAL human parts of an "
        "image without people: all ignore, an all-zero mapping input).")

    def validate(self) -> None:
        choice("consistency_mode", self.consistency_mode, ("auto",) + MODES)
        choice("rampup", self.rampup, ("fixed", "up"))
        if self.film_lr_decay_epochs <= 0 or self.film_learning_rate <= 0:
            raise ValueError("--film_learning_rate and --film_lr_decay_epochs must be > 0")
        if self.mapping_chunks < 1:
            raise ValueError(f"--mapping_chunks must be >= 1, got {self.mapping_chunks}")


@METHODS.register("mtpsl")
class MTPSL(Method):
    """Ours / Ours+ / full-supervision consistency, chosen by `--consistency_mode`.

    Each step feeds both views (2B images) through the network in one batch; the supervised
    loss (per image, masked) uses view 1, the consistency loss view 2's predictions, labels
    and shared feature. Total = weighting(task losses) + w * sum_n sum_pairs L(s,t) / B. The
    mapping net's FiLM tables have their own Adam (`--film_learning_rate`, halved every
    `--film_lr_decay_epochs`); everything else uses the main optimiser. The mapping encoder
    is the one registered for the backbone (MAPPING_ENCODERS).
    """

    Options = MTPSLOptions
    two_views = True
    flag_name = "mtpsl"  # the --method value, for error messages (subclasses override)
    # Whether `joint_space_terms` honours --mapping_chunks (the joint-space baselines embed
    # every active item at once for their batch-wide losses).
    chunked_mapping = True

    def __init__(self, facts, tasks=None):
        super().__init__(facts, tasks)
        backbone = self.facts.backbone
        if backbone not in MAPPING_ENCODERS:
            raise ValueError(
                f"--method={self.flag_name} with --backbone={backbone}: no mapping encoder is registered for it, so "
                f"only --backbone={', '.join(MAPPING_ENCODERS.names())} is supported (a new backbone needs a "
                "mapping encoder module, see docs/DESIGN.md 'To add X')")
        mode = self.options.consistency_mode
        self.mode = mode if mode != "auto" else AUTO_MODES.get(self.facts.setting_kind, "mtpsl")
        if max_active_pairs(len(self.tasks), self.mode, self.facts.labelled_counts) == 0:
            raise ValueError(
                f"--method={self.flag_name} --consistency_mode={self.mode}: no task pair can be active when "
                f"images have {list(self.facts.labelled_counts)} labelled tasks (--setting="
                f"{self.facts.setting_kind}); use --consistency_mode=mtpsl_plus or full")
        if self.options.mapping_chunks > 1 and not self.chunked_mapping:
            raise ValueError(
                f"--method={self.flag_name} does not support --mapping_chunks={self.options.mapping_chunks}: its "
                "loss compares every active item with the others, so they are embedded in one call (use "
                "--remat_mapping to save memory)")
        self.mapping: MappingNet | None = None

    def build(self, network) -> None:
        super().build(network)
        self.mapping = MappingNet([t.name for t in self.tasks], [t.channels for t in self.tasks],
                                  filters=list(network.filters), encoder_name=self.facts.backbone, name="mapping")
        if self.options.mapping_chunks > 1:
            check_precision(self.mapping)

    def extra_layers(self) -> list:
        return [self.mapping]

    def variable_groups(self, network) -> Dict[str, list]:
        return self._with_weighting({
            "main": list(network.trainable_variables) + self.mapping.non_film_trainable_variables,
            "film": self.mapping.film_variables})

    def extra_optimizers(self, steps_per_epoch: int) -> Dict[str, object]:
        o = self.options
        lr = StepDecay(o.film_learning_rate, steps_per_epoch, o.film_lr_decay_epochs, 0.5)
        film = keras.optimizers.Adam(learning_rate=lr, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
        return {**super().extra_optimizers(steps_per_epoch), "film": film}

    def extra_loss_names(self) -> List[str]:
        return ["consistency"]

    def capacity(self, local_batch: int) -> int:
        return local_batch * max_active_pairs(len(self.tasks), self.mode, self.facts.labelled_counts)

    def con_weight(self, progress: tf.Tensor) -> tf.Tensor:
        weight = tf.constant(self.options.con_weight, tf.float32)
        if self.options.rampup == "up":
            weight *= tf.minimum(progress / RAMP_EPOCHS, 1.0)
        return weight

    def loss_terms(self, network, batch, global_batch_size, progress, step):
        view1, view2 = two_view_outputs(network, batch, "mtpsl")
        losses = task_losses(self.tasks, view1, batch["labels"], batch["label_mask"], global_batch_size,
                             "per_image")
        extra, weights = self.joint_space_terms(view2, batch, global_batch_size, progress, step)
        return LossTerms(losses, presence(self.tasks, batch["label_mask"]), extra, weights)

    def joint_space_terms(self, view2, batch, global_batch_size, progress, step):
        """(extra terms, their weights) from view 2's outputs (`{task: ..., "feature": ...}`);
        the joint-space baselines (contrastive, discriminator) override this."""
        o = self.options
        total = consistency_sum(
            self.mapping, view2, batch["labels_aug"], view2["feature"], batch["label_mask"], self.mode,
            capacity=self.capacity(batch["image"].shape[0]), chunks=o.mapping_chunks, seed=self._seed(step),
            reg_weight=o.reg_weight, tasks=self.tasks, recompute=o.remat_mapping,
            skip_unannotated=o.skip_unannotated_targets)
        consistency = total / float(global_batch_size)
        return {"consistency": consistency}, {"consistency": self.con_weight(progress)}

    def active_items(self, view2, batch, step) -> ActiveItems:
        """The embedded active (image, pair) items of view 2 (`compact.embed_active_items`)."""
        return embed_active_items(
            self.mapping, view2, batch["labels_aug"], view2["feature"], batch["label_mask"], self.mode,
            capacity=self.capacity(batch["image"].shape[0]), seed=self._seed(step), training=True,
            tasks=self.tasks, recompute=self.options.remat_mapping,
            skip_unannotated=self.options.skip_unannotated_targets)

    def _seed(self, step) -> tf.Tensor:
        """Stateless Gumbel seed from (train seed, step, replica): fresh noise every step and
        replica, reproducible across resumes."""
        ctx = tf.distribute.get_replica_context()
        replica = ctx.replica_id_in_sync_group if ctx is not None else 0
        base = tf.stack([tf.constant(self.facts.seed, tf.int64), tf.cast(step, tf.int64)])
        return tf.random.experimental.stateless_fold_in(base, tf.cast(replica, tf.int64))
