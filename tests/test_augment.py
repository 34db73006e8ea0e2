"""Tests of mtpsl_tf.data.augment: PyTorch-exact resizes, scale-crop, flip, two views."""

import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.data import augment

H, W = 8, 12


# ---------- numpy references, written from the definitions ----------
def np_nearest_indices(size, out_size):
    """PyTorch mode='nearest': src = floor(dst * (in / out)) in float32, clamped to in - 1."""
    scale = np.float32(size) / np.float32(out_size)
    source = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(source, size - 1)


def np_nearest(x, out_h, out_w):
    return x[np_nearest_indices(x.shape[0], out_h)][:, np_nearest_indices(x.shape[1], out_w)]


def np_linear_1d(x, out_size, axis):
    """align_corners=True along one axis: src = dst * (in - 1) / (out - 1).

    Like PyTorch, the source coordinate is computed in float32 (for 26 -> 44 it is off by
    ~1e-6 from the exact value); the interpolation itself is float64.
    """
    size = x.shape[axis]
    scale = np.float32(size - 1) / np.float32(out_size - 1) if out_size > 1 else np.float32(0)
    source = (np.arange(out_size, dtype=np.float32) * scale).astype(np.float64)
    index0 = np.floor(source).astype(np.int64)
    index1 = np.minimum(index0 + 1, size - 1)
    weight = source - index0
    shape = [1] * x.ndim
    shape[axis] = -1
    weight = weight.reshape(shape)
    return (1 - weight) * np.take(x, index0, axis) + weight * np.take(x, index1, axis)


def np_bilinear(x, out_h, out_w):
    return np_linear_1d(np_linear_1d(x.astype(np.float64), out_w, 1), out_h, 0)


def np_scale_crop(image, labels, scale, top, left):
    """The reference RandomScaleCrop for a given draw (scale, top, left)."""
    height, width = image.shape[:2]
    h, w = int(height / scale), int(width / scale)

    def crop(x):
        return x[top : top + h, left : left + w]

    out = {}
    for key, value in labels.items():
        if key == "normal":
            out[key] = np_bilinear(crop(value), height, width)
        else:
            out[key] = np_nearest(crop(value), height, width)
    out["depth"] = out["depth"] / np.float32(scale)
    return np_bilinear(crop(image), height, width), out


# ---------- fixtures ----------
def make_example(seed=0, height=H, width=W):
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(height, width, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    image = rng.random((height, width, 3), dtype=np.float32)
    labels = {
        "semantic": rng.integers(-1, 13, size=(height, width)).astype(np.int32),
        "depth": rng.random((height, width, 1), dtype=np.float32) * 10,
        "normal": normal,
    }
    return image, labels


def to_numpy(structure):
    return tf.nest.map_structure(lambda t: np.asarray(t), structure)


def assert_examples_equal(a, b):
    for x, y in zip(tf.nest.flatten(to_numpy(a)), tf.nest.flatten(to_numpy(b))):
        np.testing.assert_array_equal(x, y)


def examples_equal(a, b):
    flat_a, flat_b = tf.nest.flatten(to_numpy(a)), tf.nest.flatten(to_numpy(b))
    return all(np.array_equal(x, y) for x, y in zip(flat_a, flat_b))


# ---------- resizes ----------
def test_resize_2x3_to_4x6_hand_computed():
    x = np.array([[0, 1, 2], [3, 4, 5]], np.float32)
    nearest = [
        [0, 0, 1, 1, 2, 2],
        [0, 0, 1, 1, 2, 2],
        [3, 3, 4, 4, 5, 5],
        [3, 3, 4, 4, 5, 5],
    ]
    np.testing.assert_array_equal(augment.resize_nearest(x, (4, 6)), nearest)
    # x = 3 r + c is linear, so align-corners bilinear gives 3 * (a / 3) + 0.4 b = a + 0.4 b.
    bilinear = [[a + 0.4 * b for b in range(6)] for a in range(4)]
    np.testing.assert_allclose(augment.resize_bilinear(x, (4, 6)), bilinear, atol=1e-6)
    np.testing.assert_array_equal(
        augment.resize_nearest(x.astype(np.int32), (4, 6)), np.array(nearest, np.int32)
    )


@pytest.mark.parametrize(
    "in_hw,out_hw", [((5, 7), (8, 12)), ((6, 10), (8, 12)), ((8, 12), (5, 7)), ((26, 3), (44, 5))]
)
def test_resizes_match_numpy_reference(in_hw, out_hw):
    x = np.random.default_rng(1).random(in_hw + (2,), dtype=np.float32)
    got_nearest = augment.resize_nearest(x, out_hw).numpy()
    np.testing.assert_array_equal(got_nearest, np_nearest(x, *out_hw))
    got_bilinear = augment.resize_bilinear(x, out_hw).numpy()
    np.testing.assert_allclose(got_bilinear, np_bilinear(x, *out_hw), atol=1e-6)


def test_nearest_uses_pytorch_float32_rule_not_exact_arithmetic():
    # 26 -> 44: exact floor(22 * 26 / 44) = 13, but PyTorch's float32 scale gives 12.
    column = np.arange(26, dtype=np.int32)[:, None]
    got = augment.resize_nearest(column, (44, 1)).numpy()[:, 0]
    assert got[22] == 12
    np.testing.assert_array_equal(got, np_nearest_indices(26, 44))


def test_crop_resize_reads_only_the_window():
    x = np.random.default_rng(2).random((H, W, 1), dtype=np.float32)
    window = x[2:7, 3:11]
    got = augment.crop_resize_bilinear(x, 2, 3, 5, 8, H, W).numpy()
    np.testing.assert_allclose(got, np_bilinear(window, H, W), atol=1e-6)
    got = augment.crop_resize_nearest(x, 2, 3, 5, 8, H, W).numpy()
    np.testing.assert_array_equal(got, np_nearest(window, H, W))


def test_bilinear_rejects_integer_input():
    with pytest.raises(TypeError, match="int32"):
        augment.resize_bilinear(np.zeros((2, 3), np.int32), (4, 6))


# ---------- random scale-crop ----------
def test_scale_one_is_identity():
    image, labels = make_example()
    out_image, out_labels = augment.random_scale_crop(image, labels, [3, 4], scales=(1.0,))
    assert_examples_equal((out_image, out_labels), (image, labels))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_random_scale_crop_matches_numpy_reference(seed):
    image, labels = make_example(seed)
    scale, _, _, top, left = (t.numpy() for t in augment.scale_crop_params([seed, 7], H, W))
    got_image, got_labels = augment.random_scale_crop(image, labels, [seed, 7])
    reference_scale = min(augment.DEFAULT_SCALES, key=lambda s: abs(s - scale))
    want_image, want_labels = np_scale_crop(image, labels, reference_scale, top, left)
    np.testing.assert_allclose(got_image, want_image, atol=1e-6)
    np.testing.assert_array_equal(got_labels["semantic"], want_labels["semantic"])
    assert got_labels["semantic"].dtype == tf.int32
    np.testing.assert_allclose(got_labels["depth"], want_labels["depth"], rtol=1e-6)
    np.testing.assert_allclose(got_labels["normal"], want_labels["normal"], atol=1e-6)


def test_depth_is_divided_by_the_chosen_scale():
    image, labels = make_example()
    labels["depth"] = np.full((H, W, 1), 3.0, np.float32)
    seen = set()
    for seed in range(30):
        scale = float(augment.scale_crop_params([seed, 0], H, W)[0])
        _, out = augment.random_scale_crop(image, labels, [seed, 0])
        np.testing.assert_allclose(out["depth"], 3.0 / scale, rtol=1e-6)
        seen.add(round(scale, 3))
    assert seen == {1.0, 1.2, 1.5}


def test_same_seed_same_output_different_seeds_differ():
    image, labels = make_example()
    first = augment.random_scale_crop(image, labels, [5, 6])
    assert_examples_equal(first, augment.random_scale_crop(image, labels, [5, 6]))
    others = [augment.random_scale_crop(image, labels, [5, s]) for s in range(7, 12)]
    assert not all(examples_equal(first, other) for other in others)


@pytest.mark.parametrize("height,width", [(8, 12), (288, 384), (128, 256), (7, 5)])
def test_crop_window_inside_image_for_all_scales(height, width):
    draw = tf.function(lambda s: augment.scale_crop_params(s, height, width))
    seen_scales, tops = set(), set()
    for seed in range(120):
        scale, h, w, top, left = (t.numpy() for t in draw(tf.constant([seed, 1])))
        python_scale = min(augment.DEFAULT_SCALES, key=lambda s: abs(s - scale))
        assert (h, w) == (int(height / python_scale), int(width / python_scale))
        assert 0 <= top <= height - h and 0 <= left <= width - w
        seen_scales.add(python_scale)
        tops.add((python_scale, int(top)))
    assert seen_scales == set(augment.DEFAULT_SCALES)
    # Scale 1.0 never moves the window.
    assert {t for s, t in tops if s == 1.0} == {0}


def test_crop_corner_reaches_both_extremes():
    draw = tf.function(lambda s: augment.scale_crop_params(s, 8, 12, scales=(1.5,)))
    tops = {int(draw(tf.constant([seed, 2]))[3]) for seed in range(100)}
    assert tops == {0, 1, 2, 3}  # h = int(8 / 1.5) = 5: top uniform in [0, 3]


def test_bad_scales_and_shapes_raise():
    image, labels = make_example()
    with pytest.raises(ValueError, match="scales"):
        augment.random_scale_crop(image, labels, [0, 0], scales=(0.5, 1.0))
    with pytest.raises(ValueError, match="scales"):
        augment.random_scale_crop(image, labels, [0, 0], scales=())
    with pytest.raises(ValueError, match="'depth'"):
        augment.random_scale_crop(image, {"depth": np.zeros((H, W + 1, 1), np.float32)}, [0, 0])


def test_unknown_label_keys_are_resized_nearest():
    image, _ = make_example()
    edge = np.random.default_rng(3).random((H, W, 1), dtype=np.float32)
    _, out = augment.random_scale_crop(image, {"edge": edge}, [9, 9], scales=(1.5,))
    _, h, w, top, left = (int(t) for t in augment.scale_crop_params([9, 9], H, W, (1.5,)))
    want = np_nearest(edge[top : top + h, left : left + w], H, W)
    np.testing.assert_array_equal(out["edge"], want)


# ---------- flips ----------
def test_flip_twice_is_identity_and_negates_normal_x():
    image, labels = make_example()
    flipped_image, flipped = augment.flip_horizontal(image, labels)
    np.testing.assert_array_equal(flipped_image, image[:, ::-1])
    np.testing.assert_array_equal(flipped["semantic"], labels["semantic"][:, ::-1])
    np.testing.assert_array_equal(flipped["depth"], labels["depth"][:, ::-1])
    mirrored = labels["normal"][:, ::-1]
    np.testing.assert_array_equal(flipped["normal"][..., 0], -mirrored[..., 0])
    np.testing.assert_array_equal(flipped["normal"][..., 1:], mirrored[..., 1:])
    assert_examples_equal(augment.flip_horizontal(flipped_image, flipped), (image, labels))


def test_random_flip_probability_and_determinism():
    image, labels = make_example()
    flipped = augment.flip_horizontal(image, labels)
    assert_examples_equal(augment.random_horizontal_flip(image, labels, [1, 1], p=1.0), flipped)
    assert_examples_equal(augment.random_horizontal_flip(image, labels, [1, 1], p=0.0),
                          (image, labels))
    outcomes = []
    for seed in range(20):
        out = augment.random_horizontal_flip(image, labels, [seed, 3])
        assert_examples_equal(out, augment.random_horizontal_flip(image, labels, [seed, 3]))
        outcomes.append(examples_equal(out, flipped))
        assert outcomes[-1] or examples_equal(out, (image, labels))
    assert any(outcomes) and not all(outcomes)
    with pytest.raises(ValueError, match="p must be"):
        augment.random_horizontal_flip(image, labels, [0, 0], p=1.5)


# ---------- two views ----------
def test_two_views_second_view_is_cropped_from_the_first():
    image, labels = make_example()
    seed = tf.constant([4, 2])
    image1, labels1, image2, labels2 = augment.two_views(image, labels, seed)
    seeds = tf.random.experimental.stateless_split(seed, num=4, alg="philox")
    assert_examples_equal((image1, labels1), augment.random_scale_crop(image, labels, seeds[1]))
    assert_examples_equal(
        (image2, labels2), augment.random_scale_crop(image1, labels1, seeds[3])
    )


def test_two_views_with_scale_one_and_flip_are_mirrors_or_copies():
    image, labels = make_example()
    flipped = augment.flip_horizontal(image, labels)
    kinds = set()
    for seed in range(12):
        image1, labels1, image2, labels2 = augment.two_views(
            image, labels, [seed, 0], flip=True, scales=(1.0,)
        )
        for view in ((image1, labels1), (image2, labels2)):
            is_flipped = examples_equal(view, flipped)
            assert is_flipped or examples_equal(view, (image, labels))
            kinds.add(is_flipped)
    assert kinds == {True, False}


def test_works_in_tf_data_map():
    images = np.stack([make_example(s)[0] for s in range(3)])
    semantic = np.stack([make_example(s)[1]["semantic"] for s in range(3)])
    depth = np.stack([make_example(s)[1]["depth"] for s in range(3)])
    normal = np.stack([make_example(s)[1]["normal"] for s in range(3)])
    dataset = tf.data.Dataset.from_tensor_slices(
        {"image": images, "labels": {"semantic": semantic, "depth": depth, "normal": normal}}
    ).enumerate()

    def views(index, example):
        seed = tf.stack([tf.constant(11, tf.int64), index])
        return augment.two_views(example["image"], example["labels"], seed, flip=True)

    outputs = list(dataset.map(views))
    assert len(outputs) == 3
    for index, got in enumerate(outputs):
        image, labels = make_example(index)
        want = augment.two_views(image, labels, tf.constant([11, index], tf.int64), flip=True)
        assert got[0].shape == (H, W, 3) and got[3]["normal"].shape == (H, W, 3)
        assert_examples_equal(got, want)


def test_jit_compile_matches_eager():
    image, labels = make_example()
    compiled = tf.function(
        lambda i, l, s: augment.two_views(i, l, s, flip=True), jit_compile=True,
        autograph=False,
    )
    for seed in ([0, 1], [2, 3]):
        got = compiled(image, labels, tf.constant(seed))
        want = augment.two_views(image, labels, tf.constant(seed), flip=True)
        np.testing.assert_array_equal(got[1]["semantic"], want[1]["semantic"])
        np.testing.assert_array_equal(got[3]["semantic"], want[3]["semantic"])
        # XLA may fuse the interpolation's multiply-adds: a few float32 ulps apart.
        for x, y in zip(tf.nest.flatten(to_numpy(got)), tf.nest.flatten(to_numpy(want))):
            np.testing.assert_allclose(x, y, atol=1e-5)


def test_unknown_spatial_shape_in_graph():
    image, labels = make_example()
    specs = (
        tf.TensorSpec([None, None, 3], tf.float32),
        {"depth": tf.TensorSpec([None, None, 1], tf.float32),
         "normal": tf.TensorSpec([None, None, 3], tf.float32),
         "semantic": tf.TensorSpec([None, None], tf.int32)},
        tf.TensorSpec([2], tf.int32),
    )
    crop = tf.function(augment.random_scale_crop, input_signature=specs)
    for seed in ([1, 2], [3, 4]):
        assert_examples_equal(
            crop(image, labels, tf.constant(seed)),
            augment.random_scale_crop(image, labels, tf.constant(seed)),
        )
