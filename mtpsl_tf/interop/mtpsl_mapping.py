"""The authors' MTPSL mapping network (`Mapfns` in their SegNet scripts) in PyTorch layout:
its configuration inferred from a state dict, and its weights copied into our `MappingNet`
(SegNet mapping encoder). Arrays come from the restricted reader; nothing here imports torch."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from mtpsl_tf.interop.assign import assign_torch_arrays

# The reference Mapfns mirrors SegNet's encoder: five stages.
_MAPFNS_STAGES = 5


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
    if len(channels) < 2 or len(filters) != _MAPFNS_STAGES:
        raise ValueError(
            "not a Mapfns state dict: expected keys like 'mapfns.pred_encoder_source.0.0.weight' "
            f"and 'mapfns.encoder_block.0..4.conv.weight'; found {len(channels)} input layers and "
            f"{len(filters)} encoder blocks"
        )
    return {"task_channels": channels, "filters": filters}


def _torch_to_variables(net) -> dict[str, object]:
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


def load_torch_state(mapping_net, state: Mapping[str, np.ndarray]) -> list[str]:
    """Copies the authors' `Mapfns` state dict (numpy arrays, PyTorch names/layouts) into the net.

    Keys may carry the `mapfns/` prefix of the parity npz or not. Conv weights are converted from
    OIHW to HWIO; FiLM tables `[C, T(T-1)]` are copied as they are (`assign_torch_arrays`).

    Returns:
        the input keys that were not used (BatchNorm `num_batches_tracked` counters are recognised
        and ignored, so they are not listed).
    Raises:
        KeyError naming every missing parameter; ValueError on a shape mismatch.
    """
    named = _normalised_state(state)
    unused = assign_torch_arrays({name: array for name, (_, array) in named.items()},
                                 _torch_to_variables(mapping_net), source="Mapfns state")
    return sorted(named[name][0] for name in unused)
