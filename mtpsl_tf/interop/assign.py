"""One routine that copies named PyTorch tensors (numpy arrays) into our variables.

Every PyTorch weight loader (the authors' SegNet and mapping net, torchvision's resnet18)
builds a dict `torch name -> our variable` and calls `assign_torch_arrays`, which does the
layout conversion and all the checks. No TensorFlow import: variables are duck-typed
(`.shape`, `.dtype`, `.assign(array)`).
"""

from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional

import numpy as np

__all__ = ["CheckpointMismatchError", "MissingTensorsError", "TensorDtypeError", "TensorShapeError",
           "UnexpectedTensorError", "assign_torch_arrays", "torch_to_ours"]

# BatchNorm's step counter: PyTorch saves it, nothing of ours holds it.
BN_COUNTER = "num_batches_tracked"
# (our variable attribute, PyTorch tensor name) of a BatchNorm (ours: models.layers.BatchNorm)
# and of a conv (Keras Conv2D).
BN_TENSORS = (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
              ("moving_variance", "running_var"))
CONV_TENSORS = (("kernel", "weight"), ("bias", "bias"))


class CheckpointMismatchError(ValueError):
    """A tensor of the file does not fit the model (shape, dtype or an unexpected name)."""


class TensorShapeError(CheckpointMismatchError):
    """A tensor's shape differs from its variable's (compared after the layout conversion)."""


class TensorDtypeError(CheckpointMismatchError):
    """A tensor is not floating point (only with `floating_only=True`)."""


class UnexpectedTensorError(CheckpointMismatchError):
    """The file has a tensor `allow_unused` rejects."""


class MissingTensorsError(KeyError):
    """The file lacks tensors the model needs; `.missing` lists them all, in target order."""

    def __init__(self, message: str, missing: List[str]):
        super().__init__(message)
        self.message = message
        self.missing = missing

    def __str__(self) -> str:  # KeyError would print the message quoted
        return self.message


def torch_to_ours(value: np.ndarray) -> np.ndarray:
    """PyTorch layout -> ours: 4-D conv weights OIHW -> HWIO; anything else as it is."""
    return np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value


def _torch_shape(shape: tuple) -> tuple:
    """Our variable shape as PyTorch would store it (HWIO -> OIHW for 4-D)."""
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape


def _numpy_dtype(dtype: Any) -> np.dtype:
    return np.dtype(getattr(dtype, "as_numpy_dtype", dtype))  # tf.DType or a Keras dtype name


def assign_torch_arrays(
    state: Mapping[str, Any],
    targets: Mapping[str, Any],
    *,
    source: str = "",
    floating_only: bool = False,
    allow_unused: Optional[Callable[[str], bool]] = None,
) -> List[str]:
    """Copies `state[name]` into `targets[name]` for every target; all or nothing.

    Args:
        state: PyTorch name -> array in PyTorch layout (conv weights OIHW), e.g. the output of
            `interop.torch_format.load_torch_file` or an npz.
        targets: PyTorch name -> our variable (anything with `.shape`, `.dtype`, `.assign`).
            Every name must be in `state`.
        source: the file (or what the state is), starting every error message.
        floating_only: reject tensors that are not floating point (TensorDtypeError).
        allow_unused: when given, every name of `state` that is not a target (BatchNorm
            `num_batches_tracked` counters included) must satisfy it, else UnexpectedTensorError.

    4-D arrays are converted OIHW -> HWIO before their shape is compared; values are cast to
    the variable's dtype. Everything is checked before anything is assigned.

    Returns:
        the names of `state` that are not targets, sorted, without `num_batches_tracked`.
    Raises:
        MissingTensorsError (a KeyError) naming every missing tensor; TensorShapeError /
        TensorDtypeError / UnexpectedTensorError (ValueErrors) naming the tensor. Messages start
        with "`source`: ".
    """
    where = f"{source}: " if source else ""
    missing = [name for name in targets if name not in state]
    if len(missing) == 1:
        raise MissingTensorsError(f"{where}missing tensor {missing[0]!r}", missing)
    if missing:
        raise MissingTensorsError(f"{where}missing {len(missing)} tensors: {missing}", missing)
    plan = []
    for name, variable in targets.items():
        value = np.asarray(state[name])
        if floating_only and not np.issubdtype(value.dtype, np.floating):
            raise TensorDtypeError(f"{where}tensor {name!r} has dtype {value.dtype}, expected floating point")
        ours = torch_to_ours(value)
        shape = tuple(variable.shape)
        if tuple(ours.shape) != shape:
            expected = _torch_shape(shape) if value.ndim == 4 else shape
            raise TensorShapeError(f"{where}tensor {name!r} has shape {tuple(value.shape)}, "
                                   f"the model expects {expected}")
        plan.append((variable, ours))
    unused = [name for name in state if name not in targets]
    if allow_unused is not None:
        for name in unused:
            if not allow_unused(name):
                raise UnexpectedTensorError(f"{where}unexpected tensor {name!r}")
    for variable, value in plan:
        variable.assign(np.asarray(value, dtype=_numpy_dtype(variable.dtype)))
    return sorted(name for name in unused if not name.endswith(BN_COUNTER))
