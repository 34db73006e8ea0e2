"""Random scale-crop, horizontal flip and two-view sampling for one example, as TF ops.

Reproduces the authors' `RandomScaleCrop` (dataset/nyuv2ssl.py, dataset/cityscapesssl.py):
pick a scale `sc` uniformly from `scales`, crop `h, w = int(H / sc), int(W / sc)` at a uniform
integer position, resize back to `H x W` and divide depth by `sc`. The resizes follow PyTorch's
`F.interpolate` exactly (they are written as gathers plus weights, not `tf.image.resize`, whose
pixel conventions differ):
  * bilinear, `align_corners=True` (image, normals): src = dst * (in - 1) / (out - 1);
  * `mode='nearest'` (semantic, depth, any other label): src = floor(dst * (in / out)), computed
    in float32 like PyTorch (this differs from exact integer arithmetic for some sizes, e.g.
    26 -> 44 maps output 22 to input 12, not 13).

The crop is never materialised: the resize gathers straight from the full image with indices
offset by the crop corner, so every tensor keeps a static shape. That makes the ops usable in
`tf.data.Dataset.map` (graph mode) and under `tf.function(jit_compile=True)`.

Randomness is stateless: every function takes `seed`, an int32/int64 tensor of shape [2], and
the same seed always gives the same result. Only integer Philox draws are used, so eager, graph
and XLA-compiled code draw the same crops and flips (TF's float draws differ under XLA).

Shapes: `image` float [H, W, 3]; `labels` a dict of per-pixel labels [H, W] or [H, W, C], e.g.
`{"semantic": int32 [H, W], "depth": float32 [H, W, 1], "normal": float32 [H, W, 3]}`.

How a label behaves is its Task's (`tasks`, default: the task registered under the label's
name): SMOOTH labels (normals) resize bilinearly like the image, the others nearest;
`zoom_label` (depth: divided by the scale) and `mirror_label_values` (normals: x negated).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tensorflow as tf

from mtpsl_tf.tasks.base import SMOOTH
from mtpsl_tf.tasks.registry import resolve_tasks

DEFAULT_SCALES = (1.0, 1.2, 1.5)
_ALG = "philox"


def _split_seed(seed, num: int) -> tf.Tensor:
    """int [num, 2]: independent seeds derived from `seed` [2]."""
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        seed = tf.cast(seed, tf.int64)
    seed.shape.assert_is_compatible_with([2])
    return tf.random.experimental.stateless_split(seed, num=num, alg=_ALG)


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    scales = tuple(float(s) for s in scales)
    if not scales or any(not s >= 1.0 or s == float("inf") for s in scales):
        raise ValueError(f"scales must be a non-empty list of finite numbers >= 1, got {scales}")
    return scales


def _spatial_size(x: tf.Tensor):
    """(H, W) of x [H, W, ...] as Python ints when static, else scalar int32 tensors."""
    if x.shape.rank is not None and x.shape.rank < 2:
        raise ValueError(f"expected a tensor [H, W, ...], got shape {x.shape}")
    dynamic = tf.shape(x)
    height, width = x.shape[0], x.shape[1]
    return (dynamic[0] if height is None else height, dynamic[1] if width is None else width)


def scale_crop_params(seed, height, width, scales: Sequence[float] = DEFAULT_SCALES):
    """Draws the crop of `random_scale_crop` for an image of `height x width`.

    Returns:
      (scale float32 [], crop_height int32 [], crop_width int32 [], top int32 [], left int32 []),
      with crop_height = int(height / scale) (in float64, like Python), top uniform in
      [0, height - crop_height], left uniform in [0, width - crop_width].
    """
    scales = _check_scales(scales)
    seeds = _split_seed(seed, 3)
    pick = tf.random.stateless_uniform(
        [], seeds[0], minval=0, maxval=len(scales), dtype=tf.int32, alg=_ALG
    )
    scale = tf.gather(tf.constant(scales, tf.float64), pick)

    def crop_size(size):
        return tf.cast(tf.floor(tf.cast(size, tf.float64) / scale), tf.int32)

    def corner(size, crop, corner_seed):
        return tf.random.stateless_uniform(
            [], corner_seed, minval=0, maxval=size - crop + 1, dtype=tf.int32, alg=_ALG
        )

    crop_height, crop_width = crop_size(height), crop_size(width)
    top = corner(tf.cast(height, tf.int32), crop_height, seeds[1])
    left = corner(tf.cast(width, tf.int32), crop_width, seeds[2])
    return tf.cast(scale, tf.float32), crop_height, crop_width, top, left


def _nearest_indices(start, size, out_size) -> tf.Tensor:
    """int32 [out_size]: PyTorch 'nearest' source indices into the window [start, start+size)."""
    scale = tf.cast(size, tf.float32) / tf.cast(out_size, tf.float32)
    source = tf.floor(tf.cast(tf.range(out_size), tf.float32) * scale)
    return start + tf.minimum(tf.cast(source, tf.int32), size - 1)


def _linear_indices(start, size, out_size):
    """Bilinear (align_corners) sources in the window [start, start+size) for out_size outputs.

    Returns (index0 int32 [out_size], index1 int32 [out_size], weight0 float32 [out_size],
    weight1 float32 [out_size]) with output = weight0 * x[index0] + weight1 * x[index1].
    """
    size_minus_1 = tf.cast(size, tf.int32) - 1
    # (in - 1) / (out - 1), and 0 for a single output, like PyTorch.
    scale = tf.math.divide_no_nan(
        tf.cast(size_minus_1, tf.float32), tf.cast(out_size, tf.float32) - 1.0
    )
    source = scale * tf.cast(tf.range(out_size), tf.float32)
    index0 = tf.minimum(tf.cast(tf.floor(source), tf.int32), size_minus_1)
    weight1 = tf.clip_by_value(source - tf.cast(index0, tf.float32), 0.0, 1.0)
    index1 = index0 + tf.cast(index0 < size_minus_1, tf.int32)
    return start + index0, start + index1, 1.0 - weight1, weight1


def crop_resize_nearest(x, top, left, crop_height, crop_width, out_height, out_width):
    """x [H, W, ...] -> [out_height, out_width, ...]: the window at (top, left) of size
    crop_height x crop_width, resized like PyTorch `F.interpolate(mode='nearest')`. Any dtype."""
    x = tf.convert_to_tensor(x)
    rows = _nearest_indices(top, crop_height, out_height)
    cols = _nearest_indices(left, crop_width, out_width)
    return tf.gather(tf.gather(x, rows, axis=0), cols, axis=1)


def _along(weights: tf.Tensor, axis: int, rank: int) -> tf.Tensor:
    """weights [n] reshaped to broadcast along `axis` of a rank-`rank` tensor."""
    shape = [1] * rank
    shape[axis] = -1
    return tf.reshape(weights, shape)


def crop_resize_bilinear(x, top, left, crop_height, crop_width, out_height, out_width):
    """x float [H, W, ...] -> [out_height, out_width, ...]: the window at (top, left) of size
    crop_height x crop_width, resized like PyTorch bilinear with `align_corners=True`."""
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise TypeError(f"bilinear resize needs a floating tensor, got {x.dtype.name}")
    rank = x.shape.rank
    row0, row1, row_w0, row_w1 = _linear_indices(top, crop_height, out_height)
    col0, col1, col_w0, col_w1 = _linear_indices(left, crop_width, out_width)
    col_w0, col_w1 = (tf.cast(_along(w, 1, rank), x.dtype) for w in (col_w0, col_w1))
    row_w0, row_w1 = (tf.cast(_along(w, 0, rank), x.dtype) for w in (row_w0, row_w1))

    def interpolate_columns(rows):
        return col_w0 * tf.gather(rows, col0, axis=1) + col_w1 * tf.gather(rows, col1, axis=1)

    # Width first, then height: PyTorch's order of operations, for the same float rounding.
    upper = interpolate_columns(tf.gather(x, row0, axis=0))
    lower = interpolate_columns(tf.gather(x, row1, axis=0))
    return row_w0 * upper + row_w1 * lower


def resize_nearest(x, size):
    """x [H, W, ...] -> [size[0], size[1], ...] like PyTorch `F.interpolate(mode='nearest')`."""
    height, width = _spatial_size(tf.convert_to_tensor(x))
    return crop_resize_nearest(x, 0, 0, height, width, size[0], size[1])


def resize_bilinear(x, size):
    """x float [H, W, ...] -> [size[0], size[1], ...], PyTorch bilinear, align_corners=True."""
    height, width = _spatial_size(tf.convert_to_tensor(x))
    return crop_resize_bilinear(x, 0, 0, height, width, size[0], size[1])


def _check_labels(image: tf.Tensor, labels: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    if image.shape.rank is not None and image.shape.rank != 3:
        raise ValueError(f"image must be [H, W, C], got shape {image.shape}")
    labels = {key: tf.convert_to_tensor(value) for key, value in labels.items()}
    for key, value in labels.items():
        if not value.shape[:2].is_compatible_with(image.shape[:2]):
            raise ValueError(
                f"label {key!r} has shape {value.shape}, expected [H, W, ...] = {image.shape[:2]}"
            )
    return labels


def random_scale_crop(image, labels, seed, scales: Sequence[float] = DEFAULT_SCALES, tasks=None):
    """The authors' RandomScaleCrop on one example.

    Args:
      image: float [H, W, C].
      labels: dict name -> [H, W] or [H, W, C]; SMOOTH labels (normals) resized bilinearly,
        everything else nearest; then each task's `zoom_label` (depth: divided by the scale).
      seed: int [2], the stateless seed.
      scales: the candidate scales (>= 1), chosen uniformly.
      tasks: the labels' Tasks (see `resolve_tasks`); default looked up by label name.

    Returns:
      (image [H, W, C], labels with the same keys, shapes and dtypes).
    """
    image = tf.convert_to_tensor(image)
    labels = _check_labels(image, labels)
    height, width = _spatial_size(image)
    scale, crop_height, crop_width, top, left = scale_crop_params(seed, height, width, scales)
    window = (top, left, crop_height, crop_width, height, width)
    kinds = resolve_tasks(labels, tasks)
    out_labels = {}
    for key, value in labels.items():
        smooth = kinds[key].label_resampling == SMOOTH
        resize = crop_resize_bilinear if smooth else crop_resize_nearest
        out_labels[key] = kinds[key].zoom_label(resize(value, *window), scale)
    return crop_resize_bilinear(image, *window), out_labels


def flip_horizontal(image, labels, tasks=None):
    """Mirrors image [H, W, C] and every label [H, W, ...] left-right, then applies each
    task's `mirror_label_values` (normals: x negated).

    The authors flip only Cityscapes (image, semantic, depth), which has no normals. A mirrored
    scene has mirrored normals, so the x component (channel 0, the image's horizontal axis)
    changes sign; without it flipped normals would disagree with the flipped image.
    """
    image = tf.reverse(tf.convert_to_tensor(image), axis=[1])
    kinds = resolve_tasks(labels, tasks)
    flipped = {}
    for key, value in labels.items():
        flipped[key] = kinds[key].mirror_label_values(tf.reverse(tf.convert_to_tensor(value), axis=[1]))
    return image, flipped


def random_horizontal_flip(image, labels, seed, p: float = 0.5, tasks=None):
    """`flip_horizontal` with probability `p` (the reference's `torch.rand(1) < 0.5`).

    Returns (image, labels) with unchanged shapes and dtypes.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"flip probability p must be in [0, 1], got {p}")
    image = tf.convert_to_tensor(image)
    labels = _check_labels(image, labels)
    seed = _split_seed(seed, 1)[0]
    # A uniform in [0, 1) from an integer draw: TF's float Philox draw differs between the
    # XLA and the kernel implementations, the integer draw does not.
    bits = tf.random.stateless_uniform(
        [], seed, minval=0, maxval=1 << 24, dtype=tf.int32, alg=_ALG
    )
    do_flip = tf.cast(bits, tf.float32) * 2.0**-24 < p
    return tf.cond(
        do_flip, lambda: flip_horizontal(image, labels, tasks), lambda: (image, dict(labels))
    )


def two_views(image, labels, seed, flip: bool = False, scales: Sequence[float] = DEFAULT_SCALES,
              tasks=None):
    """The two views of MTPSL: view 1 from the example, view 2 from view 1.

    view 1 = random_scale_crop(example); view 2 = random_scale_crop(view 1). With `flip` (the
    authors' Cityscapes setting) each step first flips its input with p=0.5, in the reference's
    order: flip then crop. The crops use the same seeds with and without `flip`.

    Returns:
      (image1 [H, W, C], labels1, image2 [H, W, C], labels2).
    """
    seeds = _split_seed(seed, 4)
    if flip:
        image, labels = random_horizontal_flip(image, labels, seeds[0], tasks=tasks)
    image1, labels1 = random_scale_crop(image, labels, seeds[1], scales, tasks)
    image2, labels2 = image1, labels1
    if flip:
        image2, labels2 = random_horizontal_flip(image2, labels2, seeds[2], tasks=tasks)
    image2, labels2 = random_scale_crop(image2, labels2, seeds[3], scales, tasks)
    return image1, labels1, image2, labels2
