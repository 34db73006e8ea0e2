"""Mapping encoders: the FiLM-conditioned shared part of the MTPSL mapping network, one per
backbone (its output is compared with that backbone's shared feature).

To support MTPSL on a new backbone: write one module with a `MappingEncoder` subclass
registered under the backbone's name, and add the module to MAPPING_ENCODERS below.
"""

from __future__ import annotations

from typing import Sequence

import keras

from mtpsl_tf.methods.mtpsl.film import InputConvBlock
from mtpsl_tf.models.remat import recompute
from mtpsl_tf.registry import Registry

# One line per encoder module (see mtpsl_tf/registry.py); keyed by backbone name.
MAPPING_ENCODERS: Registry = Registry("mapping encoder", modules=(
    "mtpsl_tf.methods.mtpsl.encoder_segnet",
    "mtpsl_tf.methods.mtpsl.encoder_resnet18_aspp",
))


class MappingEncoder(keras.layers.Layer):
    """FiLM-conditioned encoder `(x [N,H,W,input_width], pair_idx int32 [N]) -> [N,h,w,C]`,
    `[h, w, C]` equal to the backbone's shared feature for an image of size `[H, W]`.

    Args:
        filters: the backbone's widths (`Backbone.filters`), from which the encoder is sized.
        num_pairs: T(T-1), the columns of every FiLM table.
        epsilon: BatchNorm epsilon.

    Subclasses create every sublayer in `__init__`, build them in `build`, and list their
    FiLM blocks (layers with `gamma`/`beta` tables) in `film_blocks`. `call(x, pair_idx,
    training, remat=False)`: with `remat`, each block's activations are recomputed in the
    backward pass (`segment`).
    """

    def __init__(self, filters: Sequence[int], num_pairs: int, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.filters = [int(f) for f in filters]
        self.num_pairs = int(num_pairs)
        self.epsilon = epsilon

    @property
    def input_width(self) -> int:
        """Channels the task-specific input layers produce."""
        raise NotImplementedError

    def film_blocks(self) -> list:
        raise NotImplementedError

    def segment(self, fn, x, remat: bool, *more):
        """`fn(x, *more)`; with `remat`, only the inputs are kept for the backward pass, which
        recomputes `fn`."""
        return recompute(fn, self)(x, *more) if remat else fn(x, *more)

    def make_input_layer(self, name: str) -> keras.layers.Layer:
        """A new task-specific input layer `[N,H,W,C_t] -> [N,H',W',input_width]` (no FiLM);
        default the reference's conv3x3 -> per-item BatchNorm -> ReLU at full resolution."""
        return InputConvBlock(self.input_width, epsilon=self.epsilon, name=name, dtype=self.dtype_policy)

    def get_config(self):
        config = super().get_config()
        config.update(filters=list(self.filters), num_pairs=self.num_pairs, epsilon=self.epsilon)
        return config
