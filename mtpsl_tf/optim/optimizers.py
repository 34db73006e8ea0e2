"""Optimisers with PyTorch semantics the Keras ones lack."""

from __future__ import annotations

import keras

from mtpsl_tf.models.layers import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class AdamL2(keras.optimizers.Adam):
    """Adam with L2 regularisation coupled to the gradient: g <- g + l2 * w, then Adam.

    This is `torch.optim.Adam(weight_decay=l2)` (applied to every parameter), which is not
    Keras' `weight_decay` (decoupled, AdamW-style).

    Args:
        l2: the coefficient (PASCAL-Context: 1e-4).
        **kwargs: keras.optimizers.Adam arguments.
    """

    def __init__(self, l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.l2 = l2

    def update_step(self, gradient, variable, learning_rate):
        if self.l2:
            gradient = gradient + keras.ops.cast(self.l2, gradient.dtype) * keras.ops.cast(variable, gradient.dtype)
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.update(l2=self.l2)
        return config
