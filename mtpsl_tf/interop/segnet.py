"""The authors' PyTorch SegNet tensors (state_dict names / layouts) -> our SegNet."""

from __future__ import annotations

from typing import Dict, Iterator, List, Mapping, Sequence, Tuple

import numpy as np

from mtpsl_tf.interop.assign import BN_TENSORS, CONV_TENSORS, assign_torch_arrays
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


def torch_targets(model: SegNet, torch_head_order: Sequence[str] | None = None) -> Dict[str, object]:
    """PyTorch state_dict name -> our variable, for every tensor of a built SegNet."""
    targets = {}
    for layer, prefix in torch_name_map(model, torch_head_order):
        names = BN_TENSORS if isinstance(layer, BatchNorm) else CONV_TENSORS
        targets.update({f"{prefix}.{theirs}": getattr(layer, ours) for ours, theirs in names})
    return targets


def assign_torch_state(
    model: SegNet, state: Mapping[str, np.ndarray], torch_head_order: Sequence[str] | None = None,
    source: str = "",
) -> List[str]:
    """Copies a PyTorch SegNet state_dict into `model` (built). Returns the unused keys
    (`num_batches_tracked` counters excluded).

    Raises KeyError listing every missing tensor, ValueError on a shape mismatch (see
    `interop.assign.assign_torch_arrays`); nothing is assigned then.
    """
    return assign_torch_arrays(state, torch_targets(model, torch_head_order), source=source)
