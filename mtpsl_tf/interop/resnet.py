"""torchvision's resnet18 ImageNet state dict -> our `DilatedResNet18` (`--pretrained`)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Dict, List, Mapping, Tuple

from mtpsl_tf.interop.assign import (BN_COUNTER, BN_TENSORS, CONV_TENSORS, MissingTensorsError,
                                     TensorShapeError, UnexpectedTensorError, assign_torch_arrays)
from mtpsl_tf.models.layers import BatchNorm

if TYPE_CHECKING:
    from mtpsl_tf.models.resnet import DilatedResNet18


def torchvision_name_map(backbone: "DilatedResNet18") -> List[Tuple[object, str]]:
    """(our conv / BN layer, torchvision module name) for every layer of the backbone."""
    pairs: List[Tuple[object, str]] = [(backbone.conv1, "conv1"), (backbone.bn1, "bn1")]
    for block in backbone.blocks:
        prefix = block.name.replace("_", ".")  # layer{i}_{j} -> layer{i}.{j}
        pairs += [(block.conv1, f"{prefix}.conv1"), (block.bn1, f"{prefix}.bn1"),
                  (block.conv2, f"{prefix}.conv2"), (block.bn2, f"{prefix}.bn2")]
        if block.downsample:
            pairs += [(block.downsample_conv, f"{prefix}.downsample.0"),
                      (block.downsample_bn, f"{prefix}.downsample.1")]
    return pairs


def torchvision_targets(backbone: "DilatedResNet18") -> Dict[str, object]:
    """torchvision state dict name -> our variable (the convs have no bias)."""
    targets = {}
    for layer, prefix in torchvision_name_map(backbone):
        names = BN_TENSORS if isinstance(layer, BatchNorm) else CONV_TENSORS[:1]
        targets.update({f"{prefix}.{theirs}": getattr(layer, ours) for ours, theirs in names})
    return targets


def load_torchvision_resnet(backbone: "DilatedResNet18", state_dict: Mapping[str, object], source: str) -> None:
    """Copies torchvision's resnet18 state dict into a built `DilatedResNet18`.

    Conv weights are transposed OIHW -> HWIO; BatchNorm weight / bias / running_mean /
    running_var go to gamma / beta / moving_mean / moving_variance. `fc.*` and
    `num_batches_tracked` are ignored. Everything is checked before anything is assigned.

    Raises:
        ValueError naming `source` and the key: a tensor is missing, a key is unexpected, a
        shape differs from the model's (e.g. a checkpoint of other widths), or a tensor is
        not floating point.
    """
    if not backbone.built:
        raise ValueError("build the model (call it once) before loading torchvision weights")
    bn_prefixes = {prefix for layer, prefix in torchvision_name_map(backbone) if isinstance(layer, BatchNorm)}

    def ignored(key: str) -> bool:
        counter = f".{BN_COUNTER}"
        return key.startswith("fc.") or (key.endswith(counter) and key[: -len(counter)] in bn_prefixes)

    try:
        assign_torch_arrays(state_dict, torchvision_targets(backbone), source=source, floating_only=True,
                            allow_unused=ignored)
    except MissingTensorsError as e:
        more = f" (and {len(e.missing) - 1} more)" if len(e.missing) > 1 else ""
        raise ValueError(f"{source}: missing tensor {e.missing[0]!r}{more}; is this torchvision's resnet18 "
                         f"state dict? (it has {len(state_dict)} keys, e.g. {sorted(map(str, state_dict))[:3]})"
                         ) from None
    except TensorShapeError as e:
        raise ValueError(f"{e} (filters {backbone.filters})") from None
    except UnexpectedTensorError as e:
        raise ValueError(f"{e}: not part of torchvision's resnet18 (conv1, bn1, layer1..layer4; "
                         "fc.* is ignored)") from None


def load_torchvision_resnet_file(backbone: "DilatedResNet18", path: str) -> None:
    """`load_torchvision_resnet` from a .pth file (read without torch or code execution)."""
    from mtpsl_tf.interop.torch_format import load_torch_file

    load_torchvision_resnet(backbone, load_torch_file(path), os.fspath(path))
