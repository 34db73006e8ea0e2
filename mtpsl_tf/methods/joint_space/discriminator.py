"""`--method=discriminator` (Discriminator-Loss, supplement Tab. 3, 5-7): MTPSL's joint
pairwise space with an adversarial discriminator instead of the cosine alignment."""

from __future__ import annotations

import dataclasses
from typing import Dict, List

import keras
import tensorflow as tf

from mtpsl_tf.methods.base import METHODS
from mtpsl_tf.methods.joint_space.gan import GAN_LOSSES, JointSpaceDiscriminator, discriminator_loss, generator_loss
from mtpsl_tf.methods.mtpsl.compact import per_image_sum
from mtpsl_tf.methods.mtpsl.consistency import feature_regulariser
from mtpsl_tf.methods.mtpsl.method import MTPSL, MTPSLOptions
from mtpsl_tf.methods.mtpsl.pairs import num_pairs
from mtpsl_tf.options import choice, option


@dataclasses.dataclass(frozen=True)
class DiscriminatorOptions(MTPSLOptions):
    """The flags of `--method=discriminator` (MTPSL's, whose con_weight weighs the adversarial term)."""

    gan_loss: str = option("non_saturating", "discriminator: non_saturating (BCE) or least_squares (LSGAN).")
    disc_width: int = option(64, "discriminator: hidden channels of the joint-space discriminator.")
    disc_use_feature: bool = option(
        True, "discriminator: condition the discriminator on the image's shared feature (stop-gradient).")
    disc_weight: float = option(1.0, "discriminator: weight of the discriminator's own loss in the total.")
    disc_learning_rate: float = option(1e-4, "discriminator: Adam lr of the discriminator (constant).")
    disc_beta_1: float = option(0.5, "discriminator: Adam beta_1 of the discriminator (DCGAN's 0.5).")

    def validate(self) -> None:
        super().validate()
        choice("gan_loss", self.gan_loss, GAN_LOSSES)
        if self.disc_width <= 0 or self.disc_learning_rate <= 0 or self.disc_weight < 0:
            raise ValueError("--disc_width and --disc_learning_rate must be > 0, --disc_weight >= 0; got "
                             f"{self.disc_width}, {self.disc_learning_rate}, {self.disc_weight}")
        if not 0 <= self.disc_beta_1 < 1:
            raise ValueError(f"--disc_beta_1 must be in [0, 1), got {self.disc_beta_1}")


@METHODS.register("discriminator")
class DiscriminatorLoss(MTPSL):
    """Supervised losses + con_weight * "adversarial" + disc_weight * "discriminator", per
    active (image, pair) item of MTPSL's mapping, summed and divided by the global batch:

        adversarial   = G(D(e_s)) + reg_weight * reg     (network + mapping net; D frozen)
        discriminator = Dloss(D(sg e_t), D(sg e_s))     (discriminator only)

    The discriminator is its own variable group with its own Adam; the two terms share one
    tape because no gradient crosses between them (stop-gradients on both sides).
    """

    Options = DiscriminatorOptions
    flag_name = "discriminator"
    chunked_mapping = False

    def __init__(self, facts, tasks=None):
        super().__init__(facts, tasks)
        self.discriminator: JointSpaceDiscriminator | None = None

    def build(self, network) -> None:
        super().build(network)
        o = self.options
        # The mapping encoder's output has the shape of the backbone's feature: last width.
        self.discriminator = JointSpaceDiscriminator(
            int(network.filters[-1]), num_pairs(len(self.tasks)), width=o.disc_width,
            use_feature=o.disc_use_feature, name="discriminator")
        self.discriminator.build()

    def extra_layers(self) -> list:
        return super().extra_layers() + [self.discriminator]

    def variable_groups(self, network) -> Dict[str, list]:
        groups = super().variable_groups(network)
        groups["discriminator"] = list(self.discriminator.trainable_variables)
        return groups

    def extra_optimizers(self, steps_per_epoch: int) -> Dict[str, object]:
        o = self.options
        adam = keras.optimizers.Adam(learning_rate=o.disc_learning_rate, beta_1=o.disc_beta_1, beta_2=0.999,
                                     epsilon=1e-8)
        return {**super().extra_optimizers(steps_per_epoch), "discriminator": adam}

    def extra_loss_names(self) -> List[str]:
        return ["adversarial", "discriminator"]

    def joint_space_terms(self, view2, batch, global_batch_size, progress, step):
        o = self.options
        items = self.active_items(view2, batch, step)
        local = batch["image"].shape[0]
        d = self.discriminator
        real = d(tf.stop_gradient(items.target), items.pair, items.feature)
        fake = d(tf.stop_gradient(items.source), items.pair, items.feature)
        fooled = d(items.source, items.pair, items.feature, frozen=True)
        reg = tf.cast(feature_regulariser(items.source, items.target, items.feature), tf.float32)
        adversarial = per_image_sum(generator_loss(fooled, o.gan_loss) + o.reg_weight * reg, items, local)
        own = per_image_sum(discriminator_loss(real, fake, o.gan_loss), items, local)
        scale = 1.0 / float(global_batch_size)
        return ({"adversarial": tf.reduce_sum(adversarial) * scale, "discriminator": tf.reduce_sum(own) * scale},
                {"adversarial": self.con_weight(progress), "discriminator": o.disc_weight})
