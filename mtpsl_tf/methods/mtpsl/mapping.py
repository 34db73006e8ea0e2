"""The joint pairwise task-space mapping network of MTPSL (SPEC section 5).

A task-specific input layer per task (conv3x3 -> BatchNorm -> ReLU) followed by a mapping
encoder shared by all tasks (registry MAPPING_ENCODERS, keyed by backbone: for SegNet the
SegNet encoder), whose every conv -> BatchNorm is followed by a FiLM transform conditioned on
the ordered task pair (s, t): `x * gamma[:, k] + beta[:, k]` with k = `pair_index(s, t, T)`.

BatchNorm in training mode normalises each ITEM with its own spatial statistics: the reference
calls the network with one item at a time, so batching items must not mix their statistics.

Tensors are NHWC. The output of the net has the shape of the backbone's shared feature
(SegNet: the last max-pooled encoder map `[N, H/32, W/32, f4]`).
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from mtpsl_tf.interop.mtpsl_mapping import config_from_torch_state, load_torch_state  # noqa: F401
from mtpsl_tf.methods.mtpsl.encoders import MAPPING_ENCODERS
from mtpsl_tf.methods.mtpsl.film import FiLMConvBlock, InputConvBlock, ItemBatchNorm, as_item_pair_index  # noqa: F401
from mtpsl_tf.methods.mtpsl.pairs import num_pairs, pair_index, pair_index_table, pair_index_tf  # noqa: F401

DEFAULT_FILTERS = (64, 128, 256, 512, 512)


@keras.saving.register_keras_serializable(package="mtpsl_tf")
class MappingNet(keras.layers.Layer):
    """Joint pairwise task-space mapping net m(x; input task, pair (s, t)).

    Args:
        task_names: ordered task names (the pair index uses this order).
        task_channels: input channels per task, e.g. `[13, 1, 3]`.
        filters: the backbone's widths (SegNet: its five encoder widths).
        epsilon: BatchNorm epsilon (PyTorch's 1e-5).
        encoder_name: the mapping encoder (MAPPING_ENCODERS), i.e. the backbone's name.

    Sublayers: `input_layers[t]` (no FiLM) and `encoder` (the FiLM-conditioned shared
    encoder; SegNet's exposes `encoder_blocks` / `conv_blocks_enc`, also reachable here). All
    weights are created at construction.

    BatchNorm running statistics are loaded/saved but never updated (see `ItemBatchNorm`): the
    method only runs the net in training mode, with per-item statistics. `film_variables` are the
    FiLM tables (the reference gives them their own optimiser).
    """

    def __init__(
        self,
        task_names: Sequence[str],
        task_channels: Sequence[int],
        filters: Sequence[int] = DEFAULT_FILTERS,
        epsilon: float = 1e-5,
        encoder_name: str = "segnet",
        **kwargs,
    ):
        super().__init__(**kwargs)
        task_names, task_channels, filters = list(task_names), list(task_channels), list(filters)
        if len(task_names) != len(task_channels):
            raise ValueError(
                f"task_names {task_names} and task_channels {task_channels} differ in length"
            )
        if len(task_names) < 2:
            raise ValueError(f"a pairwise mapping needs at least 2 tasks, got {task_names}")
        self.task_names = task_names
        self.task_channels = task_channels
        self.filters = filters
        self.epsilon = epsilon
        self.encoder_name = encoder_name
        self.encoder = MAPPING_ENCODERS.get(encoder_name)(
            filters, num_pairs(self.num_tasks), epsilon=epsilon, name="encoder", dtype=self.dtype_policy)
        self.input_layers = [self.encoder.make_input_layer(f"input_{name}") for name in task_names]
        self.build()

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def build(self, input_shape=None):
        """Builds every sublayer from the constructor arguments (input_shape is ignored)."""
        if self.built:
            return
        for layer, channels in zip(self.input_layers, self.task_channels):
            layer.build((None, None, None, channels))
        self.encoder.build()
        super().build(input_shape)

    @property
    def encoder_blocks(self) -> list:
        """The SegNet encoder's first FiLM conv of each stage."""
        return self.encoder.encoder_blocks

    @property
    def conv_blocks_enc(self) -> list:
        """The SegNet encoder's other FiLM convs, per stage."""
        return self.encoder.conv_blocks_enc

    # ----------------------------------------------------------------------------------------
    @property
    def film_variables(self) -> list:
        """The FiLM tables (the reference optimises them with their own Adam)."""
        return [v for block in self._film_blocks() for v in (block.gamma, block.beta)]

    @property
    def non_film_trainable_variables(self) -> list:
        """Trainable variables other than the FiLM tables."""
        film = {id(v) for v in self.film_variables}
        return [v for v in self.trainable_variables if id(v) not in film]

    def _film_blocks(self) -> list:
        return self.encoder.film_blocks()

    def task_position(self, task) -> int:
        """Task name or position -> position in `task_names`."""
        if isinstance(task, str):
            if task not in self.task_names:
                raise KeyError(f"unknown task {task!r}; expected one of {self.task_names}")
            return self.task_names.index(task)
        task = int(task)
        if not 0 <= task < self.num_tasks:
            raise ValueError(f"task position {task} out of range for tasks {self.task_names}")
        return task

    # ----------------------------------------------------------------------------------------
    def encode(self, x, pair_idx, training, remat=False):
        """Shared FiLM encoder on input-layer features: `[N,H,W,f0]`, int32 `[N]` -> `[N,H/32,W/32,f4]`;
        `remat`: recompute each block's activations in the backward pass."""
        return self._encode(x, pair_idx, training, remat)

    def _encode(self, x, pair_idx, training, remat=False):
        """Shared FiLM encoder: `[N,H,W,f0]`, int32 `[N]` -> the feature's shape."""
        return self.encoder(x, pair_idx, training=training, remat=remat)

    def embed(self, x, input_task, source, target, training):
        """Embeds items of ONE input task for the pair (source, target).

        Args:
            x: float `[N, H, W, C_input_task]` (preprocessed prediction or label).
            input_task: task name or position (static) selecting the input layer.
            source, target: task positions, Python ints or int tensors `[N]` (per item).
            training: Python bool (the method always uses True: per-item statistics).
        Returns:
            float `[N, H/32, W/32, f4]`.
        """
        position = self.task_position(input_task)
        self._check_channels(x, position)
        if isinstance(source, (int, np.integer)) and isinstance(target, (int, np.integer)):
            idx = pair_index(source, target, self.num_tasks)
        else:
            idx = pair_index_tf(source, target, self.num_tasks)
        h = self.input_layers[position](x, training=training)
        return self._encode(h, as_item_pair_index(idx, tf.shape(h)[0]), training)

    def embed_items(self, inputs_by_task, pair_idx_by_task, training):
        """Batched embedding of items of all tasks in ONE pass of the shared encoder.

        Args:
            inputs_by_task: list (task order) of float `[N_t, H, W, C_t]` or None (no items).
            pair_idx_by_task: list of int `[N_t]` pair indices (or scalars), None where the
                inputs are None.
            training: Python bool.
        Returns:
            list (task order) of float `[N_t, H/32, W/32, f4]` (None where the input was None).

        Per-item BatchNorm statistics make this equal to embedding every item on its own.
        """
        if len(inputs_by_task) != self.num_tasks or len(pair_idx_by_task) != self.num_tasks:
            raise ValueError(
                f"expected one input and one pair index entry per task {self.task_names}, got "
                f"{len(inputs_by_task)} and {len(pair_idx_by_task)}"
            )
        hidden, indices, sizes = [], [], []
        for position, (x, idx) in enumerate(zip(inputs_by_task, pair_idx_by_task)):
            if x is None:
                sizes.append(None)
                continue
            self._check_channels(x, position)
            h = self.input_layers[position](x, training=training)
            hidden.append(h)
            indices.append(as_item_pair_index(idx, tf.shape(h)[0]))
            sizes.append(tf.shape(h)[0])
        if not hidden:
            raise ValueError("embed_items got no inputs (every task entry is None)")
        out = self._encode(tf.concat(hidden, axis=0), tf.concat(indices, axis=0), training)
        splits = tf.split(out, [s for s in sizes if s is not None], axis=0)
        result, k = [], 0
        for size in sizes:
            if size is None:
                result.append(None)
            else:
                result.append(splits[k])
                k += 1
        return result

    def call(self, inputs_by_task, pair_idx_by_task, training=None):
        """Same as `embed_items` (Keras entry point; training=None means inference)."""
        return self.embed_items(inputs_by_task, pair_idx_by_task, training=bool(training))

    def _check_channels(self, x, position):
        channels = x.shape[-1]
        if channels is not None and channels != self.task_channels[position]:
            raise ValueError(
                f"input for task {self.task_names[position]!r} has {channels} channels, "
                f"expected {self.task_channels[position]}"
            )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "task_names": list(self.task_names),
                "task_channels": list(self.task_channels),
                "filters": list(self.filters),
                "epsilon": self.epsilon,
                "encoder_name": self.encoder_name,
            }
        )
        return config
