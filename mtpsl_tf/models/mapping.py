"""The joint pairwise task-space mapping network of MTPSL (SPEC section 5).

A task-specific input layer per task (conv3x3 -> BatchNorm -> ReLU) followed by a SegNet encoder
shared by all tasks, whose every conv -> BatchNorm is followed by a FiLM transform conditioned on
the ordered task pair (s, t): `x * gamma[:, k] + beta[:, k]` with k = `pair_index(s, t, T)`.

BatchNorm in training mode normalises each ITEM with its own spatial statistics: the reference
calls the network with one item at a time, so batching items must not mix their statistics.

Tensors are NHWC. The output of the net is the last max-pooled encoder map `[N, H/32, W/32, f4]`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

DEFAULT_FILTERS = (64, 128, 256, 512, 512)
# Number of FiLM conv blocks in `conv_block_enc[i]` of the reference SegNet encoder.
_CONV_BLOCKS_PER_STAGE = (1, 1, 2, 2, 2)


# --------------------------------------------------------------------------------------------
# Pair index
# --------------------------------------------------------------------------------------------
def num_pairs(num_tasks: int) -> int:
    """Number of ordered off-diagonal task pairs, T(T-1)."""
    return num_tasks * (num_tasks - 1)


def pair_index(source: int, target: int, num_tasks: int) -> int:
    """Row-major index of the ordered pair (source, target), source != target, among the T(T-1)
    off-diagonal pairs: `source*(T-1) + (target if target < source else target-1)`."""
    for name, value in (("source", source), ("target", target)):
        if not 0 <= int(value) < num_tasks:
            raise ValueError(f"{name} task {value} is out of range for {num_tasks} tasks")
    if source == target:
        raise ValueError(f"pair ({source}, {target}): source and target task must differ")
    source, target = int(source), int(target)
    return source * (num_tasks - 1) + (target if target < source else target - 1)


def pair_index_tf(source, target, num_tasks: int) -> tf.Tensor:
    """Vectorised `pair_index` for int tensors of any (equal) shape; int32 result.

    No range/diagonal check (it must compile under XLA): source == target gives a meaningless index.
    """
    source = tf.cast(source, tf.int32)
    target = tf.cast(target, tf.int32)
    return source * (num_tasks - 1) + tf.where(target < source, target, target - 1)


def pair_index_table(num_tasks: int) -> np.ndarray:
    """int `[T, T]` table of `pair_index(s, t)`, -1 on the diagonal."""
    table = np.full((num_tasks, num_tasks), -1, dtype=np.int64)
    for s in range(num_tasks):
        for t in range(num_tasks):
            if s != t:
                table[s, t] = pair_index(s, t, num_tasks)
    return table


def _as_item_pair_index(pair_idx, num_items) -> tf.Tensor:
    """Scalar or `[N]` pair index -> int32 `[N]`."""
    pair_idx = tf.convert_to_tensor(pair_idx)
    pair_idx = tf.cast(pair_idx, tf.int32)
    if pair_idx.shape.rank == 0:
        return tf.fill(tf.reshape(num_items, [1]), pair_idx)
    if pair_idx.shape.rank != 1:
        raise ValueError(f"pair index must be a scalar or a [N] vector, got shape {pair_idx.shape}")
    return pair_idx


def _xavier_normal() -> keras.initializers.Initializer:
    """PyTorch's `xavier_normal_`: untruncated normal, std sqrt(2 / (fan_in + fan_out))."""
    return keras.initializers.VarianceScaling(
        scale=1.0, mode="fan_avg", distribution="untruncated_normal"
    )


def _conv3x3(filters: int, name: str, dtype) -> keras.layers.Conv2D:
    return keras.layers.Conv2D(
        filters,
        3,
        padding="same",
        use_bias=True,
        kernel_initializer=_xavier_normal(),
        bias_initializer="zeros",
        name=name,
        dtype=dtype,
    )


def _max_pool_2x2(x: tf.Tensor) -> tf.Tensor:
    return tf.nn.max_pool2d(x, ksize=2, strides=2, padding="VALID")


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="mtpsl_tf")
class ItemBatchNorm(keras.layers.Layer):
    """BatchNorm whose training-mode statistics are per item: `[N, H, W, C] -> [N, H, W, C]`.

    training=True: mean and biased variance over (H, W) of each item and channel (what PyTorch's
    BatchNorm2d computes when called on a batch of one item), then `* gamma + beta`.
    training=False: the running statistics `moving_mean` / `moving_variance`.

    The running statistics are NOT updated in training mode: the MTPSL mapping net only ever runs
    in training mode, so they are never read by the method; they exist so that the authors'
    checkpoints load and save losslessly (and inference mode behaves like PyTorch's eval mode).
    """

    def __init__(self, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=(channels,), initializer="zeros", trainable=False
        )
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=(channels,), initializer="ones", trainable=False
        )
        super().build(input_shape)

    def call(self, inputs, training=None):
        if training:
            mean, variance = tf.nn.moments(inputs, axes=[1, 2], keepdims=True)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        normalised = (inputs - mean) * tf.math.rsqrt(variance + self.epsilon)
        return normalised * self.gamma + self.beta

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package="mtpsl_tf")
class InputConvBlock(keras.layers.Layer):
    """Task-specific input layer: conv3x3 -> per-item BatchNorm -> ReLU.

    `[N, H, W, C_t] -> [N, H, W, filters]`.
    """

    def __init__(self, filters: int, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.epsilon = epsilon
        self.conv = _conv3x3(filters, name="conv", dtype=self.dtype_policy)
        self.bn = ItemBatchNorm(epsilon=epsilon, name="bn", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build(tuple(input_shape[:-1]) + (self.filters,))
        super().build(input_shape)

    def call(self, inputs, training=None):
        return tf.nn.relu(self.bn(self.conv(inputs), training=training))

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package="mtpsl_tf")
class FiLMConvBlock(keras.layers.Layer):
    """conv3x3 -> per-item BatchNorm -> FiLM -> ReLU, `[N,H,W,C_in] -> [N,H,W,filters]`.

    FiLM tables `gamma` (init 1) and `beta` (init 0) have shape `[filters, num_pairs]` (the
    PyTorch layout, so the authors' tables copy over directly); item n uses column
    `pair_idx[n]`: `x * gamma[:, k] + beta[:, k]`.
    """

    def __init__(self, filters: int, num_pairs: int, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.num_pairs = num_pairs
        self.epsilon = epsilon
        self.conv = _conv3x3(filters, name="conv", dtype=self.dtype_policy)
        self.bn = ItemBatchNorm(epsilon=epsilon, name="bn", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build(tuple(input_shape[:-1]) + (self.filters,))
        table_shape = (self.filters, self.num_pairs)
        self.gamma = self.add_weight(name="gamma", shape=table_shape, initializer="ones")
        self.beta = self.add_weight(name="beta", shape=table_shape, initializer="zeros")
        super().build(input_shape)

    def call(self, inputs, pair_idx, training=None):
        """inputs `[N,H,W,C_in]`; pair_idx int scalar or `[N]`; returns `[N,H,W,filters]`."""
        x = self.bn(self.conv(inputs), training=training)
        idx = _as_item_pair_index(pair_idx, tf.shape(x)[0])
        # Gather each item's FiLM column: [C, N] -> [N, 1, 1, C].
        gamma = tf.transpose(tf.gather(self.gamma, idx, axis=1))[:, None, None, :]
        beta = tf.transpose(tf.gather(self.beta, idx, axis=1))[:, None, None, :]
        return tf.nn.relu(x * gamma + beta)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"filters": self.filters, "num_pairs": self.num_pairs, "epsilon": self.epsilon}
        )
        return config


@keras.saving.register_keras_serializable(package="mtpsl_tf")
class MappingNet(keras.layers.Layer):
    """Joint pairwise task-space mapping net m(x; input task, pair (s, t)).

    Args:
        task_names: ordered task names (the pair index uses this order).
        task_channels: input channels per task, e.g. `[13, 1, 3]`.
        filters: the five SegNet encoder widths.
        epsilon: BatchNorm epsilon (PyTorch's 1e-5).

    Sublayers: `input_layers[t]` (no FiLM), `encoder_blocks[i]` (FiLM conv f(i-1)->f(i), with
    f(-1) = f0) and `conv_blocks_enc[i]` (a list of 1, 1, 2, 2, 2 FiLM convs); a 2x2 max-pool
    ends every stage. All weights are created at construction.

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
        if len(filters) != len(_CONV_BLOCKS_PER_STAGE):
            raise ValueError(
                f"filters must have {len(_CONV_BLOCKS_PER_STAGE)} entries, got {filters}"
            )
        self.task_names = task_names
        self.task_channels = task_channels
        self.filters = filters
        self.epsilon = epsilon
        pairs = num_pairs(self.num_tasks)
        self.input_layers = [
            InputConvBlock(
                filters[0], epsilon=epsilon, name=f"input_{name}", dtype=self.dtype_policy
            ) for name in task_names
        ]
        self.encoder_blocks = [
            FiLMConvBlock(
                filters[i],
                pairs,
                epsilon=epsilon,
                name=f"encoder_block_{i}",
                dtype=self.dtype_policy,
            )
            for i in range(len(filters))
        ]
        self.conv_blocks_enc = [
            [
                FiLMConvBlock(
                    filters[i],
                    pairs,
                    epsilon=epsilon,
                    name=f"conv_block_enc_{i}_{j}",
                    dtype=self.dtype_policy,
                )
                for j in range(count)
            ]
            for i, count in enumerate(_CONV_BLOCKS_PER_STAGE)
        ]
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
        in_channels = self.filters[0]
        for block, stage, width in zip(self.encoder_blocks, self.conv_blocks_enc, self.filters):
            block.build((None, None, None, in_channels))
            for conv in stage:
                conv.build((None, None, None, width))
            in_channels = width
        super().build(input_shape)

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
        blocks = []
        for block, stage in zip(self.encoder_blocks, self.conv_blocks_enc):
            blocks.append(block)
            blocks.extend(stage)
        return blocks

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
    def encode(self, x, pair_idx, training):
        """Shared FiLM encoder on input-layer features: `[N,H,W,f0]`, int32 `[N]` -> `[N,H/32,W/32,f4]`."""
        return self._encode(x, pair_idx, training)

    def _encode(self, x, pair_idx, training):
        """Shared FiLM encoder: `[N,H,W,f0]`, int32 `[N]` -> `[N,H/32,W/32,f4]`."""
        for block, stage in zip(self.encoder_blocks, self.conv_blocks_enc):
            x = block(x, pair_idx, training=training)
            for conv in stage:
                x = conv(x, pair_idx, training=training)
            x = _max_pool_2x2(x)
        return x

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
        return self._encode(h, _as_item_pair_index(idx, tf.shape(h)[0]), training)

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
            indices.append(_as_item_pair_index(idx, tf.shape(h)[0]))
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
            }
        )
        return config


# --------------------------------------------------------------------------------------------
# The authors' PyTorch weights
# --------------------------------------------------------------------------------------------
def _strip_prefix(name: str) -> str:
    """Accepts `mapfns/mapfns.x`, `mapfns.x` and `x`; returns `x`."""
    for prefix in ("mapfns/", "mapfns."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def _normalised_state(state: Mapping[str, np.ndarray]) -> dict[str, tuple[str, np.ndarray]]:
    """`{stripped name: (original key, array)}`."""
    return {_strip_prefix(key): (key, np.asarray(value)) for key, value in state.items()}


def config_from_torch_state(state: Mapping[str, np.ndarray]) -> dict:
    """Infers `{"task_channels": [...], "filters": [...]}` from the authors' Mapfns state dict."""
    named = _normalised_state(state)
    channels = []
    while f"pred_encoder_source.{len(channels)}.0.weight" in named:
        channels.append(int(named[f"pred_encoder_source.{len(channels)}.0.weight"][1].shape[1]))
    filters = []
    while f"encoder_block.{len(filters)}.conv.weight" in named:
        filters.append(int(named[f"encoder_block.{len(filters)}.conv.weight"][1].shape[0]))
    if len(channels) < 2 or len(filters) != len(_CONV_BLOCKS_PER_STAGE):
        raise ValueError(
            "not a Mapfns state dict: expected keys like 'mapfns.pred_encoder_source.0.0.weight' "
            f"and 'mapfns.encoder_block.0..4.conv.weight'; found {len(channels)} input layers and "
            f"{len(filters)} encoder blocks"
        )
    return {"task_channels": channels, "filters": filters}


def _torch_to_variables(net: MappingNet) -> dict[str, object]:
    """PyTorch parameter name (without the `mapfns.` prefix) -> our variable."""
    targets = {}

    def add_bn(prefix, bn):
        targets[f"{prefix}.weight"] = bn.gamma
        targets[f"{prefix}.bias"] = bn.beta
        targets[f"{prefix}.running_mean"] = bn.moving_mean
        targets[f"{prefix}.running_var"] = bn.moving_variance

    def add_film(prefix, block):
        targets[f"{prefix}.conv.weight"] = block.conv.kernel
        targets[f"{prefix}.conv.bias"] = block.conv.bias
        add_bn(f"{prefix}.bn", block.bn)
        targets[f"{prefix}.gamma"] = block.gamma
        targets[f"{prefix}.beta"] = block.beta

    for t, layer in enumerate(net.input_layers):
        targets[f"pred_encoder_source.{t}.0.weight"] = layer.conv.kernel
        targets[f"pred_encoder_source.{t}.0.bias"] = layer.conv.bias
        add_bn(f"pred_encoder_source.{t}.1", layer.bn)
    for i, (block, stage) in enumerate(zip(net.encoder_blocks, net.conv_blocks_enc)):
        add_film(f"encoder_block.{i}", block)
        if len(stage) == 1:
            add_film(f"conv_block_enc.{i}", stage[0])
        else:
            for j, conv in enumerate(stage):
                add_film(f"conv_block_enc.{i}.{j}", conv)
    return targets


def load_torch_state(mapping_net: MappingNet, state: Mapping[str, np.ndarray]) -> list[str]:
    """Copies the authors' `Mapfns` state dict (numpy arrays, PyTorch names/layouts) into the net.

    Keys may carry the `mapfns/` prefix of the parity npz or not. Conv weights are converted from
    OIHW to HWIO; FiLM tables `[C, T(T-1)]` are copied as they are.

    Returns:
        the input keys that were not used (BatchNorm `num_batches_tracked` counters are recognised
        and ignored, so they are not listed).
    Raises:
        KeyError naming every missing parameter; ValueError on a shape mismatch.
    """
    named = _normalised_state(state)
    targets = _torch_to_variables(mapping_net)
    missing = sorted(name for name in targets if name not in named)
    if missing:
        raise KeyError(f"Mapfns state is missing {len(missing)} parameters: {missing}")
    for name, variable in targets.items():
        key, value = named[name]
        if value.ndim == 4:
            value = np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"{key!r}: shape {tuple(value.shape)} (after layout conversion) does not match "
                f"the variable's {tuple(variable.shape)}"
            )
        variable.assign(value.astype(variable.dtype))
    return sorted(
        key
        for name, (key, _) in named.items()
        if name not in targets and not name.endswith("num_batches_tracked")
    )
