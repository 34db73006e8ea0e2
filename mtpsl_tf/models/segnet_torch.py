"""Copies the authors' PyTorch SegNet tensors (state_dict names/layouts) into our SegNet."""

from __future__ import annotations

from typing import Dict, Iterator, List, Mapping, Sequence, Tuple

import numpy as np

from mtpsl_tf.models.layers import BatchNorm, ConvBNReLU
from mtpsl_tf.models.segnet import SegNet

# The reference names its heads pred_task1..3 in the dataset's task order.
TORCH_HEAD_PREFIX = "pred_task"


def _unit_pairs(block: ConvBNReLU, prefix: str) -> Iterator[Tuple[object, str]]:
    """(layer, torch prefix) for every conv / BN of a conv_layer Sequential.

    A standard unit is Sequential(conv, bn, relu) -> indices 0, 1; the "deep" unit is
    Sequential(conv, bn, relu, conv, bn, relu) -> 0, 1, 3, 4.
    """
    for u, (conv, norm) in enumerate(zip(block.convs, block.norms)):
        yield conv, f"{prefix}.{3 * u}"
        yield norm, f"{prefix}.{3 * u + 1}"


def _stage_blocks(model: SegNet) -> Iterator[Tuple[ConvBNReLU, str]]:
    for i in range(5):
        yield model.encoder_block[i], f"encoder_block.{i}"
        yield model.decoder_block[i], f"decoder_block.{i}"
        for kind, blocks in (("conv_block_enc", model.conv_block_enc[i]), ("conv_block_dec", model.conv_block_dec[i])):
            if len(blocks) == 1:
                yield blocks[0], f"{kind}.{i}"
            else:
                for j, block in enumerate(blocks):
                    yield block, f"{kind}.{i}.{j}"


def torch_name_map(model: SegNet, torch_head_order: Sequence[str] | None = None) -> List[Tuple[object, str]]:
    """All (Keras sub-layer, torch module prefix) pairs of a built SegNet."""
    pairs: List[Tuple[object, str]] = []
    for block, prefix in _stage_blocks(model):
        pairs.extend(_unit_pairs(block, prefix))
    order = list(torch_head_order or model.task_names)
    for t, task in enumerate(order):
        head = model.task_heads[task]
        pairs.append((head.hidden, f"{TORCH_HEAD_PREFIX}{t + 1}.0"))
        pairs.append((head.out, f"{TORCH_HEAD_PREFIX}{t + 1}.1"))
    return pairs


def _values_for(layer, prefix: str, state: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    if isinstance(layer, BatchNorm):
        names = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
        return {ours: state[f"{prefix}.{theirs}"] for ours, theirs in names.items()}
    kernel = state[f"{prefix}.weight"]
    return {"kernel": np.transpose(kernel, (2, 3, 1, 0)), "bias": state[f"{prefix}.bias"]}  # OIHW -> HWIO


def required_keys(model: SegNet, torch_head_order: Sequence[str] | None = None) -> List[str]:
    keys = []
    for layer, prefix in torch_name_map(model, torch_head_order):
        if isinstance(layer, BatchNorm):
            keys += [f"{prefix}.{n}" for n in ("weight", "bias", "running_mean", "running_var")]
        else:
            keys += [f"{prefix}.weight", f"{prefix}.bias"]
    return keys


def assign_torch_state(
    model: SegNet, state: Mapping[str, np.ndarray], torch_head_order: Sequence[str] | None = None
) -> List[str]:
    """Copies a PyTorch SegNet state_dict into `model` (built). Returns the unused keys.

    Raises KeyError listing every missing tensor, ValueError on a shape mismatch.
    """
    missing = [k for k in required_keys(model, torch_head_order) if k not in state]
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} SegNet tensors, e.g. {missing[:5]}")
    used = set()
    for layer, prefix in torch_name_map(model, torch_head_order):
        values = _values_for(layer, prefix, state)
        for attr, value in values.items():
            variable = getattr(layer, attr)
            if tuple(variable.shape) != tuple(value.shape):
                raise ValueError(f"{prefix}: {attr} has shape {tuple(value.shape)}, model expects {tuple(variable.shape)}")
            variable.assign(np.asarray(value, dtype=np.float32))
        used.update(k for k in state if k.startswith(prefix + "."))
    return sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
