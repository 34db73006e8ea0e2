"""Learning-rate schedules keyed on the optimiser's step count (so they survive resume)."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="mtpsl_tf")
class StepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr = initial * factor ** floor(step / (steps_per_epoch * decay_epochs)).

    The reference's `StepLR(step_size=decay_epochs, gamma=factor)` stepped once per epoch.
    """

    def __init__(self, initial: float, steps_per_epoch: int, decay_epochs: int, factor: float = 0.5):
        self.initial = initial
        self.steps_per_epoch = steps_per_epoch
        self.decay_epochs = decay_epochs
        self.factor = factor

    def __call__(self, step):
        epoch = tf.math.floordiv(tf.cast(step, tf.int64), self.steps_per_epoch)
        drops = tf.cast(tf.math.floordiv(epoch, self.decay_epochs), tf.float32)
        return self.initial * tf.pow(tf.cast(self.factor, tf.float32), drops)

    def get_config(self):
        return {"initial": self.initial, "steps_per_epoch": self.steps_per_epoch,
                "decay_epochs": self.decay_epochs, "factor": self.factor}
