"""Optimisers with PyTorch semantics the Keras ones lack."""

from __future__ import annotations

import keras
import tensorflow as tf

from mtpsl_tf.models.layers import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class AdamL2(keras.optimizers.Adam):
    """Adam with L2 regularisation coupled to the gradient: g <- g + l2 * w, then Adam.

    This is `torch.optim.Adam(weight_decay=l2)` (applied to every parameter), which is not
    Keras' `weight_decay` (decoupled, AdamW-style).

    The update of each variable is TensorFlow's fused `ResourceApplyAdam` kernel (the same
    formula as Keras' Adam: m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
    w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)) instead of Keras' ~12 graph ops
    per variable: with the ~200 variables of an MTPSL step (SegNet + mapping net) that is
    ~2,500 fewer ops to trace (tiny training runs in the tests ~10 % faster) and one kernel per
    variable in a non-XLA step. The
    kernel forms 1 - b in float32 where Keras rounds it from float64: the two differ by
    ~1e-7 relative per step. `amsgrad` and sparse gradients take Keras' path.

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
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.constant(self.beta_1, dtype), tf.constant(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].value.handle, v=self._velocities[index].value.handle,
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
            epsilon=tf.constant(self.epsilon, dtype), grad=tf.cast(gradient, dtype))

    def get_config(self):
        config = super().get_config()
        config.update(l2=self.l2)
        return config
