"""OpenCV's `cv2.resize` rules in numpy, for resizing predictions back to each image's original
size as Multi-Task-Learning-PyTorch's `save_model_predictions` does (OpenCV is not a dependency;
tests compare with it)."""

from __future__ import annotations

import numpy as np


def _check(x: np.ndarray, height: int, width: int) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim not in (2, 3) or min(x.shape[:2]) < 1 or height < 1 or width < 1:
        raise ValueError(f"resize: expected a [H, W] or [H, W, C] map and a size >= 1, got shape "
                         f"{x.shape} -> ({height}, {width})")
    return x


def nearest(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """`cv2.resize(x, (width, height), interpolation=cv2.INTER_NEAREST)`: source index
    min(floor(dst * in / out), in - 1) per axis (no half-pixel offset)."""
    x = _check(x, height, width)
    rows = np.minimum(np.floor(np.arange(height) * (x.shape[0] / height)).astype(int), x.shape[0] - 1)
    cols = np.minimum(np.floor(np.arange(width) * (x.shape[1] / width)).astype(int), x.shape[1] - 1)
    return x[rows][:, cols]


def _linear_taps(in_size: int, out_size: int):
    """Left source index, right source index and right weight per output index (half-pixel
    centres; OpenCV clamps positions left of the first centre to it)."""
    src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    src = np.maximum(src, 0.0)
    left = np.minimum(np.floor(src).astype(int), in_size - 1)
    weight = np.where(left >= in_size - 1, 0.0, src - left)
    return left, np.minimum(left + 1, in_size - 1), weight


def bilinear(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 `cv2.resize(x, (width, height), interpolation=cv2.INTER_LINEAR)` of a float map
    (no antialiasing; within float32 rounding of OpenCV)."""
    x = _check(x, height, width).astype(np.float64)
    top, bottom, wy = _linear_taps(x.shape[0], height)
    left, right, wx = _linear_taps(x.shape[1], width)
    shape = (-1, 1) + (1,) * (x.ndim - 2)
    rows = x[top] * (1 - wy.reshape(shape)) + x[bottom] * wy.reshape(shape)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (rows[:, left] * (1 - wx.reshape(shape)) + rows[:, right] * wx.reshape(shape)).astype(np.float32)
