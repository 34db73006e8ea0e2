"""PASCAL-Context training / test transforms of Multi-Task-Learning-PyTorch, as TF ops.

Reproduces `utils/common_config.py::get_transformations` for `PASCALContext` with the
transforms of `data/custom_transforms.py` (github.com/SimonVandenhende/Multi-Task-Learning-PyTorch):

  train: RandomHorizontalFlip -> ScaleNRotate(rots=(-20, 20), scales=(.75, 1.25)) ->
         FixedResize(512 x 512) -> AddIgnoreRegions -> ToTensor (-> Normalize: in the backbone)
  test:  FixedResize(512 x 512) -> AddIgnoreRegions -> ToTensor

with the per-task interpolation of their `FLAGVALS` (utils/config.py): `cv2.INTER_CUBIC` for
the image and the normals, `cv2.INTER_NEAREST` for semseg, human_parts, sal and edge (train and
test alike; `INFER_FLAGVALS` only resize predictions in their final evaluation).

What each step does, as in the reference:
  * RandomHorizontalFlip (p = 0.5): mirrors every map; negates the normals' channel 0 (the
    x component; `sample['normals'][:, :, 0] *= -1`).
  * ScaleNRotate: one angle `rot = 40 u1 - 20` degrees and one scale `sc = 0.5 u2 - 0.25 + 1`
    for all maps (u uniform in [0, 1); their formula centres both ranges on 0 / 1 whatever the
    bounds, kept here). Normals first turn in-plane by `rot`: with a = atan2(n0, n1) and
    r = |(n0, n1)|, (n0, n1) <- (r sin(a + rot), r cos(a + rot)); n2 is kept. Then every map
    goes through `cv2.warpAffine(x, cv2.getRotationMatrix2D((w / 2, h / 2), rot, sc), (w, h))`:
    output size = input size, pixels mapped from outside the image are 0 (BORDER_CONSTANT) -
    black image, semseg class 0 (background, not ignore), human_parts 0, all-zero (invalid)
    normals, sal 0 and edge 0. `warp_affine` reproduces OpenCV's fixed-point coordinates
    (nearest: rounded to 1/1024 then to the nearest pixel; cubic: rounded to 1/32 pixel, with
    OpenCV's tabulated cubic weights, A = -0.75) and its constant border (taps outside the
    image count as 0).
  * FixedResize: `cv2.resize` to the output size: nearest = OpenCV `INTER_NEAREST`
    (source = floor(dst * in / out)); cubic = OpenCV `INTER_CUBIC` (half-pixel centres,
    A = -0.75, edge pixels replicated). Normals are then divided by (|n| + float32 eps), so
    all-zero normals stay all-zero.
  * AddIgnoreRegions: normals of norm 0 are ignored (all-zero is already our invalid marker);
    human_parts that are all 0 after the transforms become all ignore (-1 here, 255 there).
  * ToTensor: the image is cast to uint8 (truncation) and divided by 255.

Why gathers and not TF's image ops: `tf.image.resize(method="bicubic")` uses Keys' A = -0.5
(OpenCV: -0.75) and no OpenCV index rounding, and `ImageProjectiveTransformV3` has no bicubic
mode and rounds float coordinates; both would move label pixels. Written as index tables plus
gathers, `resize` and `warp_affine` match OpenCV: checked against cv2 4.9 and 4.14 on float32
maps, nearest results are identical and cubic ones agree to float32 rounding (< 3e-4 on
0..255 values). The whole training policy, checked against the reference's transforms run
with cv2 on random 33..57-pixel examples: semseg / human_parts / sal / edge identical, normals
within 4e-4, image levels identical but for ~0.1% one level apart (float rounding at the
truncation) and the uint8 wrap-around below.

Deviations from the reference (small):
  * ToTensor's `astype(np.uint8)` wraps cubic overshoots (e.g. -1.3 -> 255, 256.2 -> 0); we
    clip to [0, 255] before truncating. The truncation adds 1e-3 before `floor` so an image
    that the transforms leave unchanged keeps its exact uint8 values despite the float [0, 1]
    round trip.
  * Float summation order in the cubic sums, and TF's float32 sin/cos/atan2 in the normals'
    in-plane rotation, differ from OpenCV / numpy by a few ulp.
  * Random draws: stateless Philox integers (24-bit uniforms) keyed by the seed, not numpy's
    global RNG; same distributions.
  * Evaluation is at 512 x 512 (their validation resolution, TEST.SCALE). Their final
    evaluation resizes the predictions back to each image's original size (INFER_FLAGVALS)
    and scores there; we do not do that yet.

Speed: `TrainTransform` / `TestTransform` run the gather kernels XLA-compiled on maps padded
to 128-pixel buckets (see `_Transform`): about 50 ms per 375 x 500 example for training on a
2-core CPU (plain TF ops: ~130 ms). The float64 index arithmetic stays outside XLA, whose
algebraic rewrites would otherwise move nearest-neighbour rounding boundaries.

Every function takes and returns the dataset contract (see docs/DESIGN.md): `image` float32
[H, W, 3] in [0, 1]; `labels` a dict keyed by task name, e.g. "semseg" int32 [H, W] (-1
ignore), "human_parts" int32 [H, W] (-1 ignore), "normals" float32 [H, W, 3] (all-zero
invalid), "sal" / "edge" float32 [H, W, 1]. H and W may be dynamic (PASCAL images vary); the
policies output a static `size`. Everything is TF graph ops (XLA-compiled functions
included), usable in `tf.data.Dataset.map(num_parallel_calls=...)`. Randomness is stateless: the same seed [2]
always gives the same result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import tensorflow as tf

from mtpsl_tf.tasks.base import SMOOTH
from mtpsl_tf.tasks.normal import rotate_in_plane as rotate_normals_in_plane  # noqa: F401  (ScaleNRotate's normals)
from mtpsl_tf.tasks.registry import resolve_tasks

DEFAULT_SIZE = (512, 512)  # TRAIN.SCALE = TEST.SCALE for PASCALContext
ROTATIONS = (-20.0, 20.0)  # degrees
SCALES = (0.75, 1.25)
FLIP_PROBABILITY = 0.5

# Per-label behaviour is the label's Task's (see `resolve_tasks`): their FLAGVALS use
# cv2.INTER_CUBIC for SMOOTH labels (normals, and the image) and INTER_NEAREST otherwise;
# `mirror_label_values`, `rotate_label_values`, `renormalise_label` and `add_ignore_regions`
# (human parts: an all-zero map -> all IGNORE) do the rest.
IGNORE = -1

NEAREST, CUBIC = "nearest", "cubic"
_ALG = "philox"
# OpenCV's warpAffine fixed point: coordinates in 1/2**AB_BITS, sub-pixel table of 2**INTER_BITS.
_AB_BITS, _INTER_BITS = 10, 5
_CUBIC_A = -0.75


# ----------------------------------------------------------------------------- helpers


def _spatial_size(x: tf.Tensor):
    """(H, W) of x [H, W, ...]: Python ints when static, else scalar int32 tensors."""
    dynamic = tf.shape(x)
    height, width = x.shape[0], x.shape[1]
    return (dynamic[0] if height is None else height, dynamic[1] if width is None else width)


def _valid(x: tf.Tensor, valid_size):
    """(height, width) int32 scalars of the region of x [H, W, ...] that holds the map; the
    rest (bottom / right) is padding that every step treats as outside the image."""
    if valid_size is None:
        valid_size = _spatial_size(x)
    return tuple(tf.cast(v, tf.int32) for v in valid_size)


def _cubic_coefficients(t: tf.Tensor) -> tf.Tensor:
    """float32 [..., 4]: OpenCV's `interpolateCubic` weights (A = -0.75) at fractions t."""
    a = tf.constant(_CUBIC_A, tf.float32)
    t = tf.cast(t, tf.float32)
    c0 = ((a * (t + 1.0) - 5.0 * a) * (t + 1.0) + 8.0 * a) * (t + 1.0) - 4.0 * a
    c1 = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    c2 = ((a + 2.0) * (1.0 - t) - (a + 3.0)) * (1.0 - t) * (1.0 - t) + 1.0
    c3 = 1.0 - c0 - c1 - c2
    return tf.stack([c0, c1, c2, c3], axis=-1)


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"output size must be (height, width) >= 1, got {size}")
    return size


def _check_range(name: str, bounds: Sequence[float]) -> tuple[float, float]:
    bounds = tuple(float(b) for b in bounds)
    if len(bounds) != 2 or not bounds[0] <= bounds[1] or not all(map(math.isfinite, bounds)):
        raise ValueError(f"{name} must be (low, high) with low <= high, got {bounds}")
    return bounds


def _check_interpolation(interpolation: str, x: tf.Tensor, what: str) -> None:
    if interpolation not in (NEAREST, CUBIC):
        raise ValueError(f"interpolation must be {NEAREST!r} or {CUBIC!r}, got {interpolation!r}")
    if interpolation == CUBIC and not x.dtype.is_floating:
        raise TypeError(f"cubic {what} needs a floating tensor, got {x.dtype.name}")


# ----------------------------------------------------------------------------- resize


def _resize_nearest_indices(in_size, out_size: int) -> tf.Tensor:
    """int32 [out]: OpenCV INTER_NEAREST sources, min(floor(dst * (1 / (out / in))), in - 1)."""
    inverse = 1.0 / (tf.constant(out_size, tf.float64) / tf.cast(in_size, tf.float64))
    source = tf.floor(tf.range(out_size, dtype=tf.float64) * inverse)
    return tf.minimum(tf.cast(source, tf.int32), in_size - 1)


def _resize_cubic_taps(in_size, out_size: int):
    """OpenCV INTER_CUBIC along one axis: (indices int32 [out, 4], weights float32 [out, 4]).

    Source = float32((dst + 0.5) * in / out - 0.5); taps floor(source) - 1 .. + 2, clamped to
    the edge (OpenCV replicates border pixels when resizing).
    """
    scale = 1.0 / (tf.constant(out_size, tf.float64) / tf.cast(in_size, tf.float64))
    source = tf.cast((tf.range(out_size, dtype=tf.float64) + 0.5) * scale - 0.5, tf.float32)
    start = tf.floor(source)
    weights = _cubic_coefficients(source - start)
    taps = tf.cast(start, tf.int32)[:, None] + tf.range(-1, 3)[None, :]
    return tf.clip_by_value(taps, 0, in_size - 1), weights


def _cubic_along(x: tf.Tensor, indices: tf.Tensor, weights: tf.Tensor, axis: int) -> tf.Tensor:
    shape = [1] * x.shape.rank
    shape[axis] = -1
    weights = tf.cast(weights, x.dtype)
    out = None
    for k in range(4):
        term = tf.gather(x, indices[:, k], axis=axis) * tf.reshape(weights[:, k], shape)
        out = term if out is None else out + term
    return out


def resize_tables(valid_size, size: Sequence[int]) -> dict:
    """The index / weight tables of `resize` from maps of `valid_size` (h, w) to `size`.

    Computed apart from the gathers so that the float64 index arithmetic never runs under
    XLA, whose algebraic rewrites (e.g. of `1 / (out / in)`) would move rounding boundaries.
    """
    height, width = _check_size(size)
    in_height, in_width = (tf.cast(v, tf.int32) for v in valid_size)
    col_idx, col_w = _resize_cubic_taps(in_width, width)
    row_idx, row_w = _resize_cubic_taps(in_height, height)
    return {"nearest_rows": _resize_nearest_indices(in_height, height),
            "nearest_cols": _resize_nearest_indices(in_width, width),
            "cubic_rows": row_idx, "cubic_row_weights": row_w,
            "cubic_cols": col_idx, "cubic_col_weights": col_w}


def _resize_with(x: tf.Tensor, tables: Mapping[str, tf.Tensor], interpolation: str) -> tf.Tensor:
    if interpolation == NEAREST:
        return tf.gather(tf.gather(x, tables["nearest_rows"], axis=0), tables["nearest_cols"], axis=1)
    # OpenCV resizes rows (horizontal pass) first, then combines them vertically.
    x = _cubic_along(x, tables["cubic_cols"], tables["cubic_col_weights"], axis=1)
    return _cubic_along(x, tables["cubic_rows"], tables["cubic_row_weights"], axis=0)


def resize(x, size: Sequence[int], interpolation: str, valid_size=None):
    """`cv2.resize(x, (width, height), interpolation=...)` for x [H, W] or [H, W, C].

    Args:
      x: the map; nearest accepts any dtype, cubic needs a float tensor.
      size: (height, width) of the output.
      interpolation: "nearest" (cv2.INTER_NEAREST) or "cubic" (cv2.INTER_CUBIC).
      valid_size: (h, w): resize only x[:h, :w] (the rest is padding); default all of x.

    Returns:
      [height, width, ...] of x's dtype.
    """
    x = tf.convert_to_tensor(x)
    _check_interpolation(interpolation, x, "resize")
    return _resize_with(x, resize_tables(_valid(x, valid_size), size), interpolation)


# ----------------------------------------------------------------------------- warp


def rotation_matrix(center_x, center_y, angle, scale) -> tf.Tensor:
    """float64 [2, 3]: `cv2.getRotationMatrix2D((center_x, center_y), angle, scale)`.

    `angle` in degrees, positive = counter-clockwise on screen (y axis pointing down).
    """
    center_x, center_y, angle, scale = (tf.cast(v, tf.float64) for v in (center_x, center_y, angle, scale))
    radians = angle * (math.pi / 180.0)
    alpha, beta = tf.cos(radians) * scale, tf.sin(radians) * scale
    return tf.stack([
        tf.stack([alpha, beta, (1.0 - alpha) * center_x - beta * center_y]),
        tf.stack([-beta, alpha, beta * center_x + (1.0 - alpha) * center_y]),
    ])


def _invert_affine(m: tf.Tensor) -> tf.Tensor:
    """float64 [2, 3]: the inverse map, computed in OpenCV's order (warpAffine without
    WARP_INVERSE_MAP inverts the matrix it is given)."""
    m = tf.cast(m, tf.float64)
    det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    inv_det = tf.math.divide_no_nan(tf.constant(1.0, tf.float64), det)
    a00, a01 = m[1, 1] * inv_det, -m[0, 1] * inv_det
    a10, a11 = -m[1, 0] * inv_det, m[0, 0] * inv_det
    b0 = -a00 * m[0, 2] - a01 * m[1, 2]
    b1 = -a10 * m[0, 2] - a11 * m[1, 2]
    return tf.stack([tf.stack([a00, a01, b0]), tf.stack([a10, a11, b1])])


def warp_tables(matrix, grid_height, grid_width) -> dict:
    """OpenCV warpAffine's fixed-point coordinate terms (int32, units of 2**-10 pixel) for a
    grid_height x grid_width output: the source of pixel (x, y) is
    (x0[y] + adelta[x], y0[y] + bdelta[x]) before the interpolation's rounding offset.

    Computed apart from the gathers, like `resize_tables`, to keep XLA out of the float64
    arithmetic.
    """
    m_inv = _invert_affine(matrix)
    scale = float(1 << _AB_BITS)
    xs = tf.cast(tf.range(grid_width), tf.float64)
    ys = tf.cast(tf.range(grid_height), tf.float64)
    # saturate_cast<int>(double) rounds half to even, like tf.round.
    return {"adelta": tf.cast(tf.round(m_inv[0, 0] * xs * scale), tf.int32),
            "bdelta": tf.cast(tf.round(m_inv[1, 0] * xs * scale), tf.int32),
            "x0": tf.cast(tf.round((m_inv[0, 1] * ys + m_inv[0, 2]) * scale), tf.int32),
            "y0": tf.cast(tf.round((m_inv[1, 1] * ys + m_inv[1, 2]) * scale), tf.int32)}


def _fixed_point_sources(tables: Mapping[str, tf.Tensor], bits: int):
    """Source coordinates (X, Y) int32 [H, W] in units of 2**-bits, rounded as OpenCV does
    (to the nearest unit: half a unit added before the arithmetic shift)."""
    round_delta = 1 << (_AB_BITS - bits - 1)
    shift = 1 << (_AB_BITS - bits)  # an arithmetic right shift = floor division
    x0, y0 = tables["x0"] + round_delta, tables["y0"] + round_delta
    return (tf.math.floordiv(x0[:, None] + tables["adelta"][None, :], shift),
            tf.math.floordiv(y0[:, None] + tables["bdelta"][None, :], shift))


def _flat(x: tf.Tensor) -> tf.Tensor:
    """x [H, W, ...] -> [H * W, ...]."""
    return tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], axis=0))


def _per_pixel(values: tf.Tensor, rank: int) -> tf.Tensor:
    """values [H, W] reshaped to broadcast over the channels of a rank-`rank` map."""
    return tf.reshape(values, tf.concat([tf.shape(values), tf.ones([rank - 2], tf.int32)], 0))


def _warp_with(x: tf.Tensor, tables: Mapping[str, tf.Tensor], interpolation: str, valid_size) -> tf.Tensor:
    rank = x.shape.rank
    h, w = _valid(x, valid_size)
    stride = tf.shape(x)[1]
    source = _flat(x)
    if interpolation == NEAREST:
        sx, sy = _fixed_point_sources(tables, 0)
        inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
        index = tf.clip_by_value(sy, 0, h - 1) * stride + tf.clip_by_value(sx, 0, w - 1)
        return tf.where(_per_pixel(inside, rank), tf.gather(source, index), tf.zeros([], x.dtype))
    fx, fy = _fixed_point_sources(tables, _INTER_BITS)
    table_size = 1 << _INTER_BITS
    # OpenCV tabulates the 1-D weights at k / 32 (float32) and multiplies them per tap.
    table = _cubic_coefficients(tf.range(table_size, dtype=tf.float32) / float(table_size))
    col_w = tf.gather(table, tf.math.floormod(fx, table_size))  # [H, W, 4]
    row_w = tf.gather(table, tf.math.floormod(fy, table_size))
    left = tf.math.floordiv(fx, table_size) - 1
    top = tf.math.floordiv(fy, table_size) - 1
    out = None
    for i in range(4):
        row = top + i
        row_ok = (row >= 0) & (row < h)
        row_start = tf.clip_by_value(row, 0, h - 1) * stride
        for j in range(4):
            col = left + j
            ok = row_ok & (col >= 0) & (col < w)
            index = row_start + tf.clip_by_value(col, 0, w - 1)
            weight = tf.where(ok, row_w[..., i] * col_w[..., j], 0.0)  # taps outside count 0
            term = tf.gather(source, index) * _per_pixel(tf.cast(weight, x.dtype), rank)
            out = term if out is None else out + term
    return out


def warp_affine(x, matrix, interpolation: str, valid_size=None):
    """`cv2.warpAffine(x, matrix, (w, h), flags=interpolation)` with its default constant-0
    border, for x [H, W] or [H, W, C].

    Args:
      x: the map; nearest accepts any dtype, cubic needs a float tensor.
      matrix: float [2, 3], the forward map (source -> destination pixel coordinates).
      interpolation: "nearest" or "cubic".
      valid_size: (h, w): the map is x[:h, :w] and the rest padding, read as outside the
        image; default all of x.

    Returns:
      [H, W, ...] of x's dtype: dst(p) = x(matrix^-1 p), 0 where that falls outside the map
      (only [:h, :w] is the reference's output; the rest is computed the same way).
    """
    x = tf.convert_to_tensor(x)
    if x.shape.rank is None or x.shape.rank < 2:
        raise ValueError(f"expected a map [H, W, ...], got shape {x.shape}")
    _check_interpolation(interpolation, x, "warp")
    grid_height, grid_width = _spatial_size(x)
    return _warp_with(x, warp_tables(matrix, grid_height, grid_width), interpolation, valid_size)


# ----------------------------------------------------------------------------- steps


def _check(image, labels: Mapping[str, tf.Tensor]):
    image = tf.convert_to_tensor(image)
    if image.shape.rank != 3:
        raise ValueError(f"image must be [H, W, C], got shape {image.shape}")
    labels = {key: tf.convert_to_tensor(value) for key, value in labels.items()}
    for key, value in labels.items():
        if value.shape.rank is None or value.shape.rank < 2:
            raise ValueError(f"label {key!r} must be [H, W, ...], got shape {value.shape}")
    return image, labels


def _layout(image: tf.Tensor, labels: Mapping[str, tf.Tensor], tasks=None) -> tuple:
    """How the maps are batched, one float32 stack per interpolation (a hashable, static
    description): ((interpolation, ((key, channels, rank, dtype), ...)), ...); key None is
    the image. Nearest maps travel as float32, exact for labels' small integers."""
    kinds = resolve_tasks(labels, tasks)
    groups = {CUBIC: [(None, image)], NEAREST: []}
    for key, value in labels.items():
        groups[CUBIC if kinds[key].label_resampling == SMOOTH else NEAREST].append((key, value))
    layout = []
    for interpolation, members in groups.items():
        entries = []
        for key, value in members:
            channels = value.shape[-1] if value.shape.rank == 3 else 1
            if channels is None:
                raise ValueError(f"map {key or 'image'!r} needs a static channel count, got {value.shape}")
            entries.append((key, channels, value.shape.rank, value.dtype))
        if entries:
            layout.append((interpolation, tuple(entries)))
    return tuple(layout)


def _group(image, labels, layout) -> dict:
    """{interpolation: float32 [H, W, C]}: the maps of `layout` concatenated on channels."""
    maps = dict(labels, **{"": image})
    stacks = {}
    for interpolation, entries in layout:
        parts = [tf.cast(maps[key or ""], tf.float32) for key, _, _, _ in entries]
        parts = [p if p.shape.rank == 3 else p[..., None] for p in parts]
        stacks[interpolation] = tf.concat(parts, axis=-1) if len(parts) > 1 else parts[0]
    return stacks


def _ungroup(stacks, layout):
    """Inverse of `_group`: (image, labels) with the original ranks and dtypes."""
    image, labels = None, {}
    for interpolation, entries in layout:
        parts = tf.split(stacks[interpolation], [c for _, c, _, _ in entries], axis=-1)
        for (key, _, rank, dtype), part in zip(entries, parts):
            if rank == 2:
                part = part[..., 0]
            part = tf.cast(part if dtype.is_floating else tf.round(part), dtype)
            if key is None:
                image = part
            else:
                labels[key] = part
    return image, labels


def _nearest_resize(x, tables):
    return _resize_with(x, tables, NEAREST)


def _resize_stacks(stacks, tables, cubic_along=_cubic_along, nearest=_nearest_resize) -> dict:
    out = {}
    for interpolation, x in stacks.items():
        if interpolation == NEAREST:
            out[interpolation] = nearest(x, tables)
        else:  # OpenCV: horizontal pass first, then vertical.
            x = cubic_along(x, tables["cubic_cols"], tables["cubic_col_weights"], 1)
            out[interpolation] = cubic_along(x, tables["cubic_rows"], tables["cubic_row_weights"], 0)
    return out


def maybe_flip(image, labels, do_flip, valid_width=None, tasks=None):
    """RandomHorizontalFlip's flip where `do_flip` (bool scalar tensor): mirrors image and
    labels left-right, then each task's `mirror_label_values` (normals: x negated).

    With `valid_width`, only columns [:valid_width] are mirrored (the rest is padding).
    """
    image, labels = _check(image, labels)
    kinds = resolve_tasks(labels, tasks)
    do_flip = tf.convert_to_tensor(do_flip, tf.bool)
    width = tf.shape(image)[1]
    valid_width = width if valid_width is None else tf.cast(valid_width, tf.int32)
    cols = tf.range(width)
    cols = tf.where(do_flip & (cols < valid_width), valid_width - 1 - cols, cols)
    flipped = {}
    for key, value in labels.items():
        value = tf.gather(value, cols, axis=1)
        mirrored = kinds[key].mirror_label_values(value)
        flipped[key] = value if mirrored is value else tf.where(do_flip, mirrored, value)
    return tf.gather(image, cols, axis=1), flipped


def horizontal_flip(image, labels, tasks=None):
    """The flip of RandomHorizontalFlip, always applied."""
    return maybe_flip(image, labels, True, tasks=tasks)


def _rotate_values(labels, angle, tasks=None) -> dict:
    kinds = resolve_tasks(labels, tasks)
    return {key: kinds[key].rotate_label_values(value, angle) for key, value in labels.items()}


def scale_rotate_matrix(valid_size, angle, scale) -> tf.Tensor:
    """ScaleNRotate's matrix for maps of `valid_size` (h, w): about (w / 2, h / 2)."""
    h, w = (tf.cast(v, tf.float64) for v in valid_size)
    return rotation_matrix(w / 2.0, h / 2.0, angle, scale)


def scale_and_rotate(image, labels, angle, scale, valid_size=None, tasks=None):
    """ScaleNRotate with a given angle (degrees) and scale, about (w / 2, h / 2).

    Returns (image, labels) of the input shapes and dtypes (see `warp_affine` for
    `valid_size`).
    """
    image, labels = _check(image, labels)
    valid = _valid(image, valid_size)
    tables = warp_tables(scale_rotate_matrix(valid, angle, scale), *_spatial_size(image))
    labels = _rotate_values(labels, angle, tasks)
    layout = _layout(image, labels, tasks)
    stacks = _group(image, labels, layout)
    return _ungroup({k: _warp_with(x, tables, k, valid) for k, x in stacks.items()}, layout)


def _renormalise(labels, size, tasks=None) -> dict:
    kinds = resolve_tasks(labels, tasks)
    out = {}
    for key, value in labels.items():
        value = kinds[key].renormalise_label(value)
        out[key] = tf.ensure_shape(value, list(size) + value.shape.as_list()[2:])
    return out


def fixed_resize(image, labels, size: Sequence[int] = DEFAULT_SIZE, valid_size=None, tasks=None):
    """FixedResize to `size` (height, width): cubic image and normals, nearest labels; normals
    renormalised by (|n| + float32 eps). Outputs have the static shape [height, width, ...]."""
    image, labels = _check(image, labels)
    size = _check_size(size)
    tables = resize_tables(_valid(image, valid_size), size)
    layout = _layout(image, labels, tasks)
    image, labels = _ungroup(_resize_stacks(_group(image, labels, layout), tables), layout)
    image = tf.ensure_shape(image, list(size) + image.shape.as_list()[2:])
    return image, _renormalise(labels, size, tasks)


def add_ignore_regions(labels, tasks=None):
    """AddIgnoreRegions: each task's `add_ignore_regions` (an all-zero human_parts map becomes
    all IGNORE (-1)).

    Normals of norm 0 are the reference's other ignore region; all-zero already marks an
    invalid normal in our contract, so they are left as they are.
    """
    kinds = resolve_tasks(labels, tasks)
    return {key: kinds[key].add_ignore_regions(tf.convert_to_tensor(value)) for key, value in labels.items()}


def to_tensor_image(image) -> tf.Tensor:
    """ToTensor's image path: [0, 1] -> uint8 by truncation (clipped, see the module notes)
    -> [0, 1] again, float32."""
    levels = tf.clip_by_value(tf.cast(image, tf.float32) * 255.0, 0.0, 255.0)
    return tf.floor(tf.minimum(levels + 1e-3, 255.0)) / 255.0


# ----------------------------------------------------------------------------- draws


def _uniform(seed) -> tf.Tensor:
    """float64 [] in [0, 1) from an integer Philox draw (same in eager, graph and XLA)."""
    bits = tf.random.stateless_uniform([], seed, minval=0, maxval=1 << 24, dtype=tf.int32, alg=_ALG)
    return tf.cast(bits, tf.float64) * 2.0**-24


def draw_params(seed, rotations: Sequence[float] = ROTATIONS, scales: Sequence[float] = SCALES,
                flip_probability: float = FLIP_PROBABILITY):
    """The random choices for one training example, as the reference draws them.

    Returns:
      (flip bool [], angle float64 [] in degrees, scale float64 []) with
      angle = (hi - lo) u - (hi - lo) / 2 and scale = (hi - lo) u' - (hi - lo) / 2 + 1.
    """
    rotations, scales = _check_range("rotations", rotations), _check_range("scales", scales)
    if not 0.0 <= flip_probability <= 1.0:
        raise ValueError(f"flip probability must be in [0, 1], got {flip_probability}")
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        seed = tf.cast(seed, tf.int64)
    seeds = tf.random.experimental.stateless_split(seed, num=3, alg=_ALG)
    flip = _uniform(seeds[0]) < flip_probability
    rot_span, scale_span = rotations[1] - rotations[0], scales[1] - scales[0]
    angle = rot_span * _uniform(seeds[1]) - rot_span / 2.0
    scale = scale_span * _uniform(seeds[2]) - scale_span / 2.0 + 1.0
    return flip, angle, scale


# ----------------------------------------------------------------------------- policies


def _pad_to_multiple(x: tf.Tensor, multiple: int) -> tf.Tensor:
    """x [H, W, ...] zero-padded at the bottom / right to multiples of `multiple`."""
    height, width = tf.shape(x)[0], tf.shape(x)[1]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    paddings = tf.concat([[[0, pad_h], [0, pad_w]], tf.zeros([x.shape.rank - 2, 2], tf.int32)], 0)
    padded = tf.pad(x, paddings)
    padded.set_shape([None, None] + x.shape.as_list()[2:])
    return padded


class _Transform:
    """Pads the maps to a size bucket and runs the steps on grouped stacks.

    With `jit`, each gather-heavy kernel (warp, each resize pass) and the element-wise pre /
    post steps are separate XLA-compiled functions: about 2.5x faster on CPU than plain TF ops.
    (One compiled function for everything is slower than none: XLA fuses the producers of a
    gather into it and recomputes them for every tap.) XLA compiles once per padded shape,
    so the maps are zero-padded to multiples of `bucket` (PASCAL's <= 500 x 500 images fall
    into at most 16 buckets of 128); only the top-left valid part is ever read. Keep one
    instance per pipeline: the compiled code is cached per instance.
    """

    def __init__(self, size: Sequence[int], jit: bool, bucket: int, tasks=None):
        self.size = _check_size(size)
        self.tasks = tasks
        if bucket < 1:
            raise ValueError(f"bucket must be >= 1, got {bucket}")
        self.bucket = int(bucket)
        self.jit = bool(jit)

        def wrap(fn):
            return tf.function(fn, jit_compile=True, autograph=False) if jit else fn

        self._group = wrap(_group)
        self._warp = wrap(_warp_with)
        self._cubic_along = wrap(_cubic_along)
        self._nearest = wrap(_nearest_resize)
        self._pre = wrap(self._pre_steps)
        self._post = wrap(self._post_steps)

    def _pre_steps(self, image, labels, do_flip, angle, valid_width, layout):
        image, labels = maybe_flip(image, labels, do_flip, valid_width, self.tasks)
        return _group(image, _rotate_values(labels, angle, self.tasks), layout)

    def _post_steps(self, stacks, layout):
        image, labels = _ungroup(stacks, layout)
        image = tf.ensure_shape(image, list(self.size) + image.shape.as_list()[2:])
        return to_tensor_image(image), add_ignore_regions(_renormalise(labels, self.size, self.tasks), self.tasks)

    def _run(self, image, labels, params=None):
        """params None: FixedResize only; else (flip, angle, scale) for the training steps."""
        image, labels = _check(image, labels)
        valid = tf.shape(image)[:2]
        valid = (valid[0], valid[1])
        image = _pad_to_multiple(image, self.bucket)
        labels = {key: _pad_to_multiple(value, self.bucket) for key, value in labels.items()}
        layout = _layout(image, labels, self.tasks)
        if params is None:
            stacks = self._group(image, labels, layout)
        else:
            do_flip, angle, scale = params
            stacks = self._pre(image, labels, do_flip, angle, valid[1], layout)
            grid = tf.shape(image)
            # Index tables outside the compiled kernels (see `resize_tables`).
            tables = warp_tables(scale_rotate_matrix(valid, angle, scale), grid[0], grid[1])
            stacks = {k: self._warp(x, tables, k, valid) for k, x in stacks.items()}
        stacks = _resize_stacks(stacks, resize_tables(valid, self.size), self._cubic_along, self._nearest)
        return self._post(stacks, layout)


class TrainTransform(_Transform):
    """The reference's PASCAL training transforms, as a callable
    `(image, labels, seed) -> (image, labels)`.

    Args:
      size: output (height, width); 512 x 512 for PASCAL.
      flip: whether RandomHorizontalFlip is part of the policy.
      rotations, scales: ScaleNRotate's ranges (degrees, zoom factors).
      jit: run the kernels XLA-compiled (see `_Transform`).
      bucket: maps are zero-padded to multiples of this before the compiled kernels.
      tasks: the labels' Tasks (see `resolve_tasks`); default looked up by label name.

    Call args: image float [H, W, 3] in [0, 1]; labels dict task -> [H, W] or [H, W, C];
    seed int [2]. Returns image float32 [height, width, 3] in [0, 1] and the labels with the
    same keys and dtypes, spatial size `size`.
    """

    def __init__(self, size: Sequence[int] = DEFAULT_SIZE, flip: bool = True,
                 rotations: Sequence[float] = ROTATIONS, scales: Sequence[float] = SCALES,
                 jit: bool = True, bucket: int = 128, tasks=None):
        super().__init__(size, jit, bucket, tasks)
        self.rotations = _check_range("rotations", rotations)
        self.scales = _check_range("scales", scales)
        self.flip_probability = FLIP_PROBABILITY if flip else 0.0

    def apply(self, image, labels, do_flip, angle, scale):
        """The transforms with given choices (flip bool, angle in degrees, scale)."""
        params = (tf.convert_to_tensor(do_flip, tf.bool), tf.cast(angle, tf.float64), tf.cast(scale, tf.float64))
        return self._run(image, labels, params)

    def __call__(self, image, labels, seed):
        return self.apply(image, labels, *draw_params(seed, self.rotations, self.scales, self.flip_probability))


class TestTransform(_Transform):
    """The reference's PASCAL test transforms (FixedResize, AddIgnoreRegions, ToTensor) as a
    callable `(image, labels) -> (image, labels)`; arguments as `TrainTransform`."""

    __test__ = False  # not a pytest class

    def __init__(self, size: Sequence[int] = DEFAULT_SIZE, jit: bool = True, bucket: int = 128, tasks=None):
        super().__init__(size, jit, bucket, tasks)

    def __call__(self, image, labels):
        return self._run(image, labels)
