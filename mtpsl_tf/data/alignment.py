"""Where each pixel of view 2 lies in view 1, for methods that compare the two views'
predictions pixel by pixel (the SSL baseline).

The policies' two-view transforms are opaque (image, labels, seed) -> two views, so the
geometry is measured, not re-derived: `with_coordinates` appends three channels to the
example's image (row / (H - 1), column / (W - 1), 1). Every policy resamples the image's
channels independently and (bi)linearly, which reproduces a linear function exactly, so
after the transform each view's extra channels hold, per pixel, its position in the original
example (and ~1 where it is inside it; fill regions get less). `view_transform` fits an affine
map to each view's positions (least squares over the inside pixels) and composes them into the
map from a view-2 pixel to its view-1 pixel position. Any crop / resize / flip / rotation
policy works; one whose views are not affine images of the example would need another way.
"""

from __future__ import annotations

import tensorflow as tf

COORDINATE_CHANNELS = 3
_INSIDE = 0.999  # the "1" channel after resampling: below this a pixel touches fill


def with_coordinates(image: tf.Tensor) -> tf.Tensor:
    """float `[H, W, C]` -> `[H, W, C + 3]`: the image and its normalised (row, column, 1)."""
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    rows = tf.cast(tf.range(height), tf.float32) / tf.cast(tf.maximum(height - 1, 1), tf.float32)
    cols = tf.cast(tf.range(width), tf.float32) / tf.cast(tf.maximum(width - 1, 1), tf.float32)
    grid_r, grid_c = tf.meshgrid(rows, cols, indexing="ij")
    coords = tf.stack([grid_r, grid_c, tf.ones_like(grid_r)], axis=-1)
    return tf.concat([image, tf.cast(coords, image.dtype)], axis=-1)


def split_coordinates(image: tf.Tensor):
    """`[H, W, C + 3]` -> (image `[H, W, C]`, coordinates `[H, W, 3]`)."""
    return image[..., :-COORDINATE_CHANNELS], image[..., -COORDINATE_CHANNELS:]


def _fit_affine(coords: tf.Tensor) -> tf.Tensor:
    """float64 `[3, 2]` A with [row, col, 1] @ A ~ the (normalised) example position, by least
    squares over the pixels whose inside channel is ~1."""
    coords = tf.cast(coords, tf.float64)
    shape = tf.shape(coords)
    rows, cols = tf.meshgrid(tf.range(shape[0]), tf.range(shape[1]), indexing="ij")
    pixels = tf.reshape(tf.stack([tf.cast(rows, tf.float64), tf.cast(cols, tf.float64),
                                  tf.ones_like(tf.cast(rows, tf.float64))], axis=-1), [-1, 3])
    targets = tf.reshape(coords[..., :2], [-1, 2])
    weight = tf.reshape(tf.cast(coords[..., 2] > _INSIDE, tf.float64), [-1, 1])
    normal = tf.matmul(pixels * weight, pixels, transpose_a=True)
    return tf.linalg.solve(normal, tf.matmul(pixels * weight, targets, transpose_a=True))


def view_transform(coords1: tf.Tensor, coords2: tf.Tensor) -> tf.Tensor:
    """float32 `[6]`: M (row-major 2x3) with view-1 position (row, col) = M @ [row2, col2, 1]
    for every view-2 pixel (row2, col2), from the views' coordinate channels `[H, W, 3]`."""
    a1, a2 = _fit_affine(coords1), _fit_affine(coords2)
    linear1, offset1 = tf.transpose(a1[:2]), a1[2]
    linear2, offset2 = tf.transpose(a2[:2]), a2[2]
    inverse1 = tf.linalg.inv(linear1)
    linear = tf.matmul(inverse1, linear2)
    offset = tf.linalg.matvec(inverse1, offset2 - offset1)
    return tf.cast(tf.reshape(tf.concat([linear, offset[:, None]], axis=1), [6]), tf.float32)


def view1_positions(transform: tf.Tensor, height: int, width: int):
    """Nearest view-1 pixel of every view-2 pixel.

    Args:
        transform: float32 `[B, 6]` from `view_transform`.

    Returns:
        (indices int32 `[B, H, W, 2]` (row, col) clipped into view 1, inside float32 `[B, H, W]`
        1 where the position lies within view 1).
    """
    m = tf.reshape(tf.cast(transform, tf.float32), [-1, 2, 3])
    rows, cols = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij")
    grid = tf.stack([rows, cols, tf.ones_like(rows)], axis=-1)  # [H, W, 3]
    positions = tf.round(tf.einsum("bij,hwj->bhwi", m, grid))
    limits = tf.constant([height - 1, width - 1], tf.float32)
    inside = tf.reduce_all((positions >= 0.0) & (positions <= limits), axis=-1)
    indices = tf.cast(tf.clip_by_value(positions, 0.0, limits), tf.int32)
    return indices, tf.cast(inside, tf.float32)


def transform_zoom_and_mirror(transform: tf.Tensor):
    """(zoom float32 `[B]`, mirrored bool `[B]`) of view 2 relative to view 1: zoom = 1 /
    sqrt|det| of the linear part (a crop by scale s gives ~s), mirrored where det < 0."""
    m = tf.reshape(tf.cast(transform, tf.float32), [-1, 6])
    det = m[:, 0] * m[:, 4] - m[:, 1] * m[:, 3]
    return tf.math.rsqrt(tf.abs(det)), det < 0.0
