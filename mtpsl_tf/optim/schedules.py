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


@keras.saving.register_keras_serializable(package="mtpsl_tf")
class PolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr = initial * (1 - epoch / epochs) ** power, constant within an epoch.

    Multi-Task-Learning-PyTorch's `adjust_learning_rate(scheduler="poly")`, called at the
    start of every epoch with the 0-based epoch.
    """

    def __init__(self, initial: float, steps_per_epoch: int, epochs: int, power: float = 0.9):
        self.initial = initial
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.power = power

    def __call__(self, step):
        epoch = tf.math.floordiv(tf.cast(step, tf.int64), self.steps_per_epoch)
        remaining = tf.maximum(1.0 - tf.cast(epoch, tf.float32) / float(self.epochs), 0.0)
        return self.initial * tf.pow(remaining, self.power)

    def get_config(self):
        return {"initial": self.initial, "steps_per_epoch": self.steps_per_epoch,
                "epochs": self.epochs, "power": self.power}
