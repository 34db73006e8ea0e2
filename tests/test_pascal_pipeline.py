"""PASCAL-Context input pipeline: the MTL-PyTorch transforms (augment_pascal), the dataset spec,
split files by image id, and the generic pipeline hooks."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import fake_layouts
from mtpsl_datasets import pascal_context
from mtpsl_tf.config import DataConfig
from mtpsl_tf.data import augment, pipeline
from mtpsl_tf.data import augment_pascal as ap
from mtpsl_tf.data.registry import AUGMENTATIONS, DATASETS

TASKS = ["semseg", "human_parts", "normals", "sal", "edge"]
# Train ids deliberately not sorted: rows follow the split file's order (the builder's index).
TRAIN_IDS = ["2008_000003", "2008_000001", "2008_000004", "2008_000002"]
VAL_IDS = ["2009_000001", "2009_000002"]
SIZES = [(40, 56), (44, 52), (36, 60), (42, 50), (40, 48), (38, 56)]


# ------------------------------------------------------------------ helpers


def random_example(height=40, width=56, seed=0, person=True):
    """One example in the contract (before the transforms), with every marker."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3)).astype(np.float32) / 255.0
    normals = rng.normal(size=(height, width, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    normals[: height // 4] = 0.0  # invalid band
    semseg = rng.integers(0, 21, (height, width)).astype(np.int32)
    semseg[0, :5] = -1
    parts = rng.integers(0, 7, (height, width)).astype(np.int32) if person else \
        np.zeros((height, width), np.int32)
    labels = {
        "semseg": semseg, "human_parts": parts, "normals": normals,
        "sal": rng.integers(0, 2, (height, width, 1)).astype(np.float32),
        "edge": rng.integers(0, 2, (height, width, 1)).astype(np.float32),
    }
    return tf.constant(image), {k: tf.constant(v) for k, v in labels.items()}


def numpy_dict(labels):
    return {k: v.numpy() for k, v in labels.items()}


def write_fake_release(root, train_ids=TRAIN_IDS, val_ids=VAL_IDS, seed=0):
    """A PASCAL_MT folder with images of about 40 x 56 (fake_layouts' per-image writer)."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "ImageSets", "Context"), exist_ok=True)
    k = 0
    for split, ids in (("train", train_ids), ("val", val_ids)):
        with open(os.path.join(root, "ImageSets", "Context", f"{split}.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
        for image_id in ids:
            fake_layouts._pascal_image(rng, str(root), image_id, SIZES[k % len(SIZES)], k % 2 == 0,
                                       "pascal-context")
            k += 1


def same_name_builder(counts):
    """The real builder with small split counts, under its real name (so `pipeline.load`'s
    `tfds.builder("mtpsl_pascal_context")` finds what it prepares)."""
    base = pascal_context.MtpslPascalContext
    with tfds.core.registered.skip_registration():
        return type("SmallMtpslPascalContext", (base,),
                    {"SPLIT_COUNTS": counts, "name": base.name, "__module__": base.__module__})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(data_dir, manual_dir) of a prepared fake PASCAL-Context (4 train, 2 test images)."""
    root = tmp_path_factory.mktemp("pascal_pipeline")
    write_fake_release(root / "manual")
    cls = same_name_builder({"train": len(TRAIN_IDS), "val": len(VAL_IDS)})
    builder = cls(data_dir=str(root / "data"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(root / "manual")))
    return root / "data", root / "manual"


def pascal_config(data_dir, **kw):
    kw.setdefault("setting", "full")
    return DataConfig(dataset="pascal_context", data_dir=str(data_dir), **kw)


# ------------------------------------------------------------------ OpenCV parity

X = ((np.arange(5 * 6).reshape(5, 6) * 7) % 23).astype(np.float32)
# cv2 4.9.0 (same in 4.14): warpAffine(X, getRotationMatrix2D((3, 2.5), rot, sc), (6, 5), flags).
CV2_WARP = {
    (13.7, 0.83, "nearest"): [[0, 0, 0, 5, 12, 0], [0, 7, 14, 17, 8, 0], [19, 3, 6, 13, 20, 4],
                              [0, 18, 2, 9, 16, 19], [0, 7, 14, 5, 0, 0]],
    (13.7, 0.83, "cubic"): [[-0.1085, 0.0, 5.3395, 5.3656, 11.0232, -0.5162],
                            [-1.7168, 7.361, 17.3361, 10.8764, 4.9778, 1.2907],
                            [14.2703, 11.27, 7.6475, 15.0172, 16.89, -2.099],
                            [4.0028, 21.0534, 5.6166, 6.9987, 14.9046, 12.303],
                            [0.4516, 11.1035, 18.9371, 9.8778, 3.603, 3.6019]],
    (-20.0, 1.25, "nearest"): [[19, 3, 10, 10, 21, 5], [15, 22, 6, 17, 17, 1], [18, 18, 6, 13, 20, 20],
                               [14, 2, 2, 9, 16, 4], [14, 21, 5, 5, 16, 0]],
    (-20.0, 1.25, "cubic"): [[19.9684, 7.7629, 5.0382, 17.0776, 21.6055, 7.1661],
                             [19.6832, 19.9173, 8.039, 13.3519, 12.3151, -0.3033],
                             [18.2877, 13.7351, 1.9581, 10.7755, 18.2001, 9.7886],
                             [15.7206, 14.4041, 3.9782, 11.2245, 20.0419, 8.3164],
                             [8.9304, 19.6461, 10.0226, 8.8163, 14.5922, 2.5412]],
}
# cv2.resize(X, (w, h), interpolation).
CV2_RESIZE = {
    ((7, 4), "nearest"): [[0, 7, 21, 5], [0, 7, 21, 5], [19, 3, 17, 1], [15, 22, 13, 20],
                          [15, 22, 13, 20], [11, 18, 9, 16], [7, 14, 5, 12]],
    ((7, 4), "cubic"): [[0.2544, 12.3004, 18.1821, 10.1664], [9.1279, 8.9201, 15.3345, 7.3189],
                        [17.3442, 7.2953, 14.1376, 6.122], [17.1484, 9.1328, 15.8867, 7.8711],
                        [14.8179, 4.5038, 13.8214, 3.5073], [10.7098, 11.5204, 8.4297, 9.2403],
                        [7.9613, 22.624, 4.0829, 18.7456]],
    ((3, 9), "nearest"): [[0, 0, 7, 14, 14, 21, 5, 5, 12], [19, 19, 3, 10, 10, 17, 1, 1, 8],
                          [11, 11, 18, 2, 2, 9, 16, 16, 0]],
    ((3, 9), "cubic"): [[6.3355, 4.6684, 5.6199, 11.1409, 18.8588, 17.9472, 4.5678, 5.2043, 11.6815],
                        [14.3924, 20.0, 20.1898, 7.8102, 7.3438, 14.89, 20.5058, 12.6562, 2.6111],
                        [7.4294, 11.5596, 15.7622, 15.7127, 9.7378, 6.2855, 11.9012, 13.5729, 12.7754]],
}


@pytest.mark.parametrize("key", sorted(CV2_WARP, key=str))
def test_warp_affine_matches_opencv(key):
    rot, sc, interpolation = key
    matrix = ap.rotation_matrix(3.0, 2.5, rot, sc)
    got = ap.warp_affine(X, matrix, interpolation).numpy()
    want = np.array(CV2_WARP[key], np.float32)
    if interpolation == "nearest":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, atol=2e-4)
    # Padding beyond the valid size is read as outside the image: same result.
    padded = np.pad(X, [(0, 3), (0, 5)], constant_values=99.0)
    got_padded = ap.warp_affine(padded, matrix, interpolation, valid_size=(5, 6)).numpy()[:5, :6]
    np.testing.assert_allclose(got_padded, got, atol=1e-5)


@pytest.mark.parametrize("key", sorted(CV2_RESIZE, key=str))
def test_resize_matches_opencv(key):
    size, interpolation = key
    got = ap.resize(X, size, interpolation).numpy()
    want = np.array(CV2_RESIZE[key], np.float32)
    if interpolation == "nearest":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, atol=2e-4)
    padded = np.pad(X, [(0, 2), (0, 2)], constant_values=99.0)
    np.testing.assert_allclose(ap.resize(padded, size, interpolation, valid_size=(5, 6)).numpy(), got,
                               atol=1e-5)


def test_rotation_matrix_is_opencvs():
    # cv2.getRotationMatrix2D((28, 20), 30, 0.5)
    want = [[0.4330127, 0.25, 10.8756443], [-0.25, 0.4330127, 18.3397460]]
    np.testing.assert_allclose(ap.rotation_matrix(28, 20, 30, 0.5).numpy(), want, atol=1e-6)


# ------------------------------------------------------------------ transforms


def test_train_transform_is_deterministic_and_seeded():
    image, labels = random_example()
    transform = ap.TrainTransform(size=(32, 24), jit=False)
    a = transform(image, labels, tf.constant([3, 7]))
    b = transform(image, labels, tf.constant([3, 7]))
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    for key in TASKS:
        np.testing.assert_array_equal(a[1][key].numpy(), b[1][key].numpy())
    images = [transform(image, labels, tf.constant([3, s]))[0].numpy() for s in range(4)]
    assert len({im.tobytes() for im in images}) == 4


def test_train_transform_shapes_and_dtypes():
    image, labels = random_example()
    out_image, out = ap.TrainTransform(size=(32, 24), jit=False)(image, labels, tf.constant([0, 1]))
    assert out_image.shape == (32, 24, 3) and out_image.dtype == tf.float32
    want = {"semseg": ((32, 24), tf.int32), "human_parts": ((32, 24), tf.int32),
            "normals": ((32, 24, 3), tf.float32), "sal": ((32, 24, 1), tf.float32),
            "edge": ((32, 24, 1), tf.float32)}
    assert {k: (tuple(v.shape), v.dtype) for k, v in out.items()} == want
    # the PASCAL default: 512 x 512, train and test
    assert ap.TrainTransform(jit=False).size == (512, 512)
    test_image, test_labels = ap.TestTransform(jit=False)(image, labels)
    assert test_image.shape == (512, 512, 3) and test_labels["normals"].shape == (512, 512, 3)


def test_compiled_transform_equals_plain():
    image, labels = random_example(42, 50, seed=3)
    args = (True, 13.7, 0.83)
    plain = ap.TrainTransform(size=(48, 40), jit=False).apply(image, labels, *args)
    compiled = ap.TrainTransform(size=(48, 40), jit=True, bucket=64).apply(image, labels, *args)
    np.testing.assert_allclose(compiled[0].numpy(), plain[0].numpy(), atol=1.5 / 255)
    levels = [np.round(x[0].numpy() * 255.0) for x in (compiled, plain)]
    assert np.mean(levels[0] != levels[1]) < 0.01  # float rounding may move a truncation
    for key in ("semseg", "human_parts", "sal", "edge"):
        np.testing.assert_array_equal(compiled[1][key].numpy(), plain[1][key].numpy())
    np.testing.assert_allclose(compiled[1]["normals"].numpy(), plain[1]["normals"].numpy(), atol=1e-4)


def test_no_rotation_unit_scale_same_size_is_identity():
    image, labels = random_example(40, 56)
    out_image, out = ap.TrainTransform(size=(40, 56), jit=False).apply(image, labels, False, 0.0, 1.0)
    np.testing.assert_array_equal(out_image.numpy(), image.numpy())
    for key in ("semseg", "human_parts", "sal", "edge"):
        np.testing.assert_array_equal(out[key].numpy(), labels[key].numpy())
    np.testing.assert_allclose(out["normals"].numpy(), labels["normals"].numpy(), atol=1e-6)
    assert np.all(out["normals"].numpy()[:10] == 0)


def test_flip_mirrors_and_negates_normals_x():
    image, labels = random_example(40, 56)
    flipped_image, flipped = ap.horizontal_flip(image, labels)
    np.testing.assert_array_equal(flipped_image.numpy(), image.numpy()[:, ::-1])
    for key in ("semseg", "human_parts", "sal", "edge"):
        np.testing.assert_array_equal(flipped[key].numpy(), labels[key].numpy()[:, ::-1])
    n = labels["normals"].numpy()[:, ::-1]
    np.testing.assert_array_equal(flipped["normals"].numpy(), np.stack([-n[..., 0], n[..., 1], n[..., 2]], -1))
    # the training policy with a forced flip and no scale / rotation: exactly the flip
    out_image, out = ap.TrainTransform(size=(40, 56), jit=False).apply(image, labels, True, 0.0, 1.0)
    np.testing.assert_array_equal(out_image.numpy(), flipped_image.numpy())
    np.testing.assert_array_equal(out["semseg"].numpy(), flipped["semseg"].numpy())
    np.testing.assert_allclose(out["normals"].numpy(), flipped["normals"].numpy(), atol=1e-6)


def test_flip_of_padded_maps_mirrors_the_valid_part_only():
    image, labels = random_example(6, 5)
    padded_image = tf.pad(image, [[0, 2], [0, 3], [0, 0]])
    padded = {k: tf.pad(v, [[0, 2], [0, 3]] + [[0, 0]] * (v.shape.rank - 2)) for k, v in labels.items()}
    got_image, got = ap.maybe_flip(padded_image, padded, True, valid_width=5)
    want_image, want = ap.horizontal_flip(image, labels)
    np.testing.assert_array_equal(got_image.numpy()[:6, :5], want_image.numpy())
    np.testing.assert_array_equal(got["normals"].numpy()[:6, :5], want["normals"].numpy())
    assert not got_image.numpy()[:, 5:].any()


def test_normals_turn_in_plane_with_the_rotation():
    n = np.array([[[0.6, 0.0, 0.8], [0.0, 0.6, 0.8], [0.0, 0.0, 0.0]]], np.float32)
    got = ap.rotate_normals_in_plane(n, 90.0).numpy()
    # a = atan2(n0, n1): (0.6, 0) has a = 90 deg -> 180 deg: (0, -0.6); (0, 0.6) -> (0.6, 0)
    np.testing.assert_allclose(got, [[[0.0, -0.6, 0.8], [0.6, 0.0, 0.8], [0.0, 0.0, 0.0]]], atol=1e-6)


def test_rotation_border_is_zero_as_cv2_constant_border():
    image, labels = random_example(40, 56)
    out_image, out = ap.TrainTransform(size=(40, 56), jit=False).apply(image, labels, False, 20.0, 0.75)
    corner = (slice(0, 2), slice(0, 2))
    assert not out_image.numpy()[corner].any()
    assert not out["semseg"].numpy()[corner].any()  # class 0, as the reference (not ignore)
    assert not out["normals"].numpy()[corner].any()  # all-zero: invalid
    assert not out["sal"].numpy()[corner].any() and not out["edge"].numpy()[corner].any()


def test_ignore_regions():
    image, labels = random_example(40, 56, person=False)
    _, out = ap.TrainTransform(size=(32, 24), jit=False)(image, labels, tf.constant([0, 5]))
    assert np.all(out["human_parts"].numpy() == -1)
    _, out = ap.TestTransform(size=(32, 24), jit=False)(image, labels)
    assert np.all(out["human_parts"].numpy() == -1)
    # a person: kept; normals: all-zero stays all-zero, the rest is unit length
    image, labels = random_example(40, 56, person=True)
    _, out = ap.TestTransform(size=(80, 112), jit=False)(image, labels)
    assert out["human_parts"].numpy().min() == 0
    norms = np.linalg.norm(out["normals"].numpy(), axis=-1)
    assert np.all(norms[:16] == 0)  # rows whose cubic taps all lie in the invalid top quarter
    assert np.allclose(norms[norms > 0], 1.0, atol=1e-5)


def test_label_values_stay_in_their_sets():
    image, labels = random_example(40, 56, seed=1)
    transform = ap.TrainTransform(size=(32, 24), jit=False)
    for seed in range(6):
        _, out = transform(image, labels, tf.constant([seed, 0]))
        assert set(np.unique(out["semseg"].numpy())) <= set(range(-1, 21))
        assert set(np.unique(out["human_parts"].numpy())) <= set(range(-1, 7))
        assert set(np.unique(out["sal"].numpy())) <= {0.0, 1.0}
        assert set(np.unique(out["edge"].numpy())) <= {0.0, 1.0}
        assert out["normals"].numpy().min() >= -1.0 - 1e-5 and out["normals"].numpy().max() <= 1.0 + 1e-5


def test_image_is_uint8_levels_in_unit_range():
    image, labels = random_example(40, 56, seed=2)
    out_image, _ = ap.TrainTransform(size=(32, 24), jit=False)(image, labels, tf.constant([1, 1]))
    levels = out_image.numpy() * 255.0
    assert levels.min() >= 0.0 and levels.max() <= 255.0
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)


def test_draws_cover_the_reference_ranges():
    draw = tf.function(lambda s: ap.draw_params(tf.stack([0, s])))
    draws = [draw(tf.constant(s)) for s in range(200)]
    flips = np.array([bool(f) for f, _, _ in draws])
    angles = np.array([float(a) for _, a, _ in draws])
    scales = np.array([float(s) for _, _, s in draws])
    assert angles.min() >= -20.0 and angles.max() < 20.0 and angles.max() - angles.min() > 35.0
    assert scales.min() >= 0.75 and scales.max() < 1.25 and scales.max() - scales.min() > 0.4
    assert 0.35 < flips.mean() < 0.65
    assert not any(bool(f) for f, _, _ in (ap.draw_params(tf.constant([0, s]), flip_probability=0.0)
                                           for s in range(20)))


def test_transform_runs_in_parallel_dataset_map():
    image, labels = random_example(40, 56)
    transform = ap.TrainTransform(size=(32, 24), jit=False)
    ds = tf.data.Dataset.from_tensors((image, labels)).repeat(4).enumerate()
    ds = ds.map(lambda i, e: transform(e[0], e[1], tf.stack([tf.constant(0, tf.int64), i])),
                num_parallel_calls=2)
    outputs = list(ds)
    assert len(outputs) == 4 and all(o[0].shape == (32, 24, 3) for o in outputs)
    want = transform(image, labels, tf.constant([0, 2], tf.int64))
    np.testing.assert_array_equal(outputs[2][1]["semseg"].numpy(), want[1]["semseg"].numpy())


# ------------------------------------------------------------------ registry


def test_pascal_spec():
    spec = DATASETS.get("pascal_context")
    assert spec.builder_module == "mtpsl_datasets.pascal_context"
    assert spec.builder_name == "mtpsl_pascal_context"
    tasks = spec.tasks()
    assert [t.name for t in tasks] == TASKS
    assert [t.channels for t in tasks] == [21, 7, 3, 1, 1]
    assert tasks[2].loss == "l1"
    assert spec.image_size == (512, 512)
    assert dict(spec.loss_weights) == {"semseg": 1, "human_parts": 2, "normals": 10, "sal": 5, "edge": 50}
    assert spec.split_files == {"onelabel": "pascal_context_onelabel.json",
                                "randomlabels": "pascal_context_randomlabels.json"}
    assert (spec.train_policy, spec.test_policy) == ("mtl_pytorch", "mtl_pytorch")
    nyu = DATASETS.get("nyuv2")
    assert (nyu.train_policy, nyu.test_policy, dict(nyu.loss_weights)) == ("mtan", "mtan", {})


def test_mtan_policy_is_the_previous_augmentation():
    image = tf.random.stateless_uniform([16, 24, 3], [1, 2])
    labels = {"semantic": tf.random.stateless_uniform([16, 24], [3, 4], maxval=13, dtype=tf.int32),
              "depth": tf.random.stateless_uniform([16, 24, 1], [5, 6])}
    key = tf.constant([7, 9], tf.int64)
    policy = AUGMENTATIONS.get("mtan")
    assert policy.make_test((16, 24)) is None
    for flip in (False, True):
        got = policy.make_train((16, 24), flip)(image, labels, key)
        want = augment.random_scale_crop(image, labels, key)
        if flip:
            want = augment.random_horizontal_flip(*want, tf.random.experimental.stateless_fold_in(key, 1))
        np.testing.assert_array_equal(got[0].numpy(), want[0].numpy())
        np.testing.assert_array_equal(got[1]["depth"].numpy(), want[1]["depth"].numpy())
        got = policy.make_two_views((16, 24), flip)(image, labels, key)
        want = augment.two_views(image, labels, key, flip=flip)
        np.testing.assert_array_equal(got[2].numpy(), want[2].numpy())


# ------------------------------------------------------------------ split files


def test_real_onelabel_json_maps_to_4998_rows(splits_dir):
    spec = DATASETS.get("pascal_context")
    with open(splits_dir / spec.split_files["onelabel"]) as f:
        data = json.load(f)
    ids = sorted({i for v in data.values() for i in v})
    assert len(ids) == 4998
    config = DataConfig(dataset="pascal_context", setting="onelabel")
    masks = pipeline.resolve_label_masks(config, spec, TASKS, len(ids), str(splits_dir), image_ids=lambda: ids)
    assert masks.shape == (4998, 5)
    assert np.all(masks.sum(axis=1) == 1)
    assert list(masks.sum(axis=0)) == [len(data[t]) for t in TASKS] == [1000, 999, 1000, 1000, 999]
    row = {image_id: r for r, image_id in enumerate(ids)}
    for column, task in enumerate(TASKS):
        assert np.all(masks[[row[i] for i in data[task]], column] == 1)
    # randomlabels: 1..4 tasks per image
    config = DataConfig(dataset="pascal_context", setting="randomlabels")
    masks = pipeline.resolve_label_masks(config, spec, TASKS, len(ids), str(splits_dir), image_ids=ids)
    assert set(np.unique(masks.sum(axis=1))) <= {1, 2, 3, 4}


def test_fake_json_maps_ids_to_train_rows(prepared, tmp_path):
    data_dir, _ = prepared
    split = {"semseg": ["2008_000001", "2008_000003"], "human_parts": ["2008_000004"],
             "normals": ["2008_000002"], "sal": ["2008_000003"], "edge": ["2008_000001", "2008_000002"]}
    (tmp_path / "pascal_context_onelabel.json").write_text(json.dumps(split))
    bundle = pipeline.load(pascal_config(data_dir, setting="onelabel"), split_dir=str(tmp_path))
    assert pipeline.read_image_ids(bundle.builder, bundle.spec) == TRAIN_IDS
    for row, image_id in enumerate(TRAIN_IDS):
        want = [int(image_id in split[t]) for t in TASKS]
        assert list(bundle.label_masks[row]) == want, image_id
    # the same file through file=PATH
    path = tmp_path / "pascal_context_onelabel.json"
    again = pipeline.load(pascal_config(data_dir, setting=f"file={path}"))
    np.testing.assert_array_equal(again.label_masks, bundle.label_masks)
    # the masks follow the examples through the pipeline: index -> row
    ds = pipeline.train_dataset(bundle, bundle_config(data_dir), seed=0, initial_epoch=0, epochs=1,
                                batch_size=1)
    for batch in ds:
        image_row = int(batch["index"][0])
        assert [float(batch["label_mask"][t][0]) for t in TASKS] == list(bundle.label_masks[image_row])


def bundle_config(data_dir, **kw):
    return pascal_config(data_dir, height=64, width=48, **kw)


# ------------------------------------------------------------------ pipeline


def test_train_and_test_batches_follow_the_contract(prepared):
    data_dir, _ = prepared
    config = bundle_config(data_dir)
    bundle = pipeline.load(config)
    assert (bundle.height, bundle.width) == (64, 48)
    assert pipeline.load(pascal_config(data_dir)).height == 512  # the spec's default
    ds = pipeline.train_dataset(bundle, config, seed=1, initial_epoch=0, epochs=2, batch_size=2)
    batches = list(ds)
    assert len(batches) == 4
    for batch in batches:
        assert batch["image"].shape == (2, 64, 48, 3) and batch["image"].dtype == tf.float32
        labels = batch["labels"]
        assert labels["semseg"].shape == (2, 64, 48) and labels["semseg"].dtype == tf.int32
        assert labels["human_parts"].shape == (2, 64, 48) and labels["human_parts"].dtype == tf.int32
        assert labels["normals"].shape == (2, 64, 48, 3)
        assert labels["sal"].shape == (2, 64, 48, 1) and labels["edge"].shape == (2, 64, 48, 1)
        assert 0.0 <= float(tf.reduce_min(batch["image"])) and float(tf.reduce_max(batch["image"])) <= 1.0
        assert set(np.unique(labels["semseg"].numpy())) <= set(range(-1, 21))
        # every other fake image shows a person; the others' parts are all ignored
        for parts in labels["human_parts"].numpy():
            assert np.all(parts == -1) or parts.min() >= 0
    # same seed -> same batches (a fresh pipeline, fresh compiled transform)
    again = list(pipeline.train_dataset(bundle, config, seed=1, initial_epoch=0, epochs=2, batch_size=2))
    for a, b in zip(batches, again):
        np.testing.assert_array_equal(a["index"].numpy(), b["index"].numpy())
        np.testing.assert_array_equal(a["labels"]["semseg"].numpy(), b["labels"]["semseg"].numpy())
        np.testing.assert_allclose(a["image"].numpy(), b["image"].numpy(), atol=1e-6)
    test = list(pipeline.test_dataset(bundle, 2))
    assert sum(int(b["image"].shape[0]) for b in test) == 2
    assert test[0]["image"].shape[1:] == (64, 48, 3) and test[0]["labels"]["normals"].shape[1:] == (64, 48, 3)


def test_contract_conversion(prepared):
    data_dir, manual = prepared
    bundle = pipeline.load(bundle_config(data_dir))
    ds = bundle.builder.as_dataset(split="train", shuffle_files=False)
    for example in ds:
        element = bundle.spec.to_contract(example, bundle.tasks)
        semseg, raw = element["labels"]["semseg"].numpy(), example["semseg"].numpy()
        np.testing.assert_array_equal(semseg, np.where(raw == 255, -1, raw))
        np.testing.assert_allclose(element["image"].numpy(), example["image"].numpy() / 255.0, atol=1e-7)
        assert element["labels"]["sal"].shape[-1] == 1 and element["labels"]["sal"].dtype == tf.float32
        if not bool(example["has_human_parts"]):
            assert not element["labels"]["human_parts"].numpy().any()


def test_no_augmentation_uses_the_test_transform(prepared):
    data_dir, _ = prepared
    config = bundle_config(data_dir, augment=False)
    bundle = pipeline.load(config)
    batches = list(pipeline.train_dataset(bundle, config, seed=0, initial_epoch=0, epochs=1, batch_size=4))
    assert batches[0]["image"].shape == (4, 64, 48, 3)


def _numpy_crop_nearest(x, top, left, crop_h, crop_w, out_h, out_w):
    def source(start, size, out):  # PyTorch 'nearest', in float32
        index = np.floor(np.arange(out, dtype=np.float32) * np.float32(size / out)).astype(int)
        return start + np.minimum(index, size - 1)
    return x[source(top, crop_h, out_h)][:, source(left, crop_w, out_w)]


def _numpy_crop_bilinear(x, top, left, crop_h, crop_w, out_h, out_w):
    """PyTorch bilinear, align_corners=True, of the window (numpy transcription)."""
    def taps(start, size, out):
        src = np.arange(out) * ((size - 1) / (out - 1))
        i0 = np.minimum(np.floor(src).astype(int), size - 1)
        i1 = np.minimum(i0 + 1, size - 1)
        return start + i0, start + i1, src - i0
    r0, r1, wr = taps(top, crop_h, out_h)
    c0, c1, wc = taps(left, crop_w, out_w)
    wc = wc[None, :, None]
    upper = x[r0][:, c0] * (1 - wc) + x[r0][:, c1] * wc
    lower = x[r1][:, c0] * (1 - wc) + x[r1][:, c1] * wc
    return upper * (1 - wr[:, None, None]) + lower * wr[:, None, None]


@pytest.mark.parametrize("person", [True, False])
def test_two_views_view2_is_a_scale_crop_of_view1(person):
    """mtl_pytorch two views: view 1 = the training transform; view 2 = MTPSL's random
    scale-crop of view 1 with every label kind resampled as its task says (numpy transcription)."""
    image, labels = random_example(40, 56, seed=4, person=person)
    size = (48, 40)
    two = AUGMENTATIONS.get("mtl_pytorch").make_two_views(size, True)
    key = tf.constant([5, 11], tf.int64)
    image1, labels1, image2, labels2 = two(image, labels, key)
    seeds = tf.random.experimental.stateless_split(key, num=2)
    want1 = ap.TrainTransform(size=size)(image, labels, seeds[0])
    np.testing.assert_array_equal(image1.numpy(), want1[0].numpy())
    for k in TASKS:
        np.testing.assert_array_equal(labels1[k].numpy(), want1[1][k].numpy())
    seen_scales = set()
    for s in range(8):  # several crops (scale 1 included with high probability)
        seed = tf.constant([s, 3], tf.int64)
        got_image, got = pascal_second_view(image1, labels1, seed)
        scale, ch, cw, top, left = (v.numpy() for v in augment.scale_crop_params(seed, *size))
        seen_scales.add(float(scale))
        window = (int(top), int(left), int(ch), int(cw)) + size
        for k in ("semseg", "human_parts", "sal", "edge"):
            np.testing.assert_array_equal(got[k].numpy(), _numpy_crop_nearest(labels1[k].numpy(), *window), err_msg=k)
        normals = _numpy_crop_bilinear(labels1["normals"].numpy().astype(np.float64), *window)
        normals = normals / (np.linalg.norm(normals, axis=-1, keepdims=True) + np.finfo(np.float32).eps)
        np.testing.assert_allclose(got["normals"].numpy(), normals, atol=1e-4)  # short vectors renormalised
        np.testing.assert_allclose(got_image.numpy(), _numpy_crop_bilinear(image1.numpy().astype(np.float64), *window),
                                   atol=1e-5)
        # label values stay in their sets; ignore kept; no person -> still all ignore
        assert set(np.unique(got["sal"].numpy())) <= {0.0, 1.0} and set(np.unique(got["edge"].numpy())) <= {0.0, 1.0}
        assert set(np.unique(got["semseg"].numpy())) <= set(range(-1, 21))
        assert person or np.all(got["human_parts"].numpy() == -1)
        norms = np.linalg.norm(got["normals"].numpy(), axis=-1)
        assert np.allclose(norms[norms > 0], 1.0, atol=1e-5)
    assert len(seen_scales) > 1
    # the pair from make_two_views is the same function of view 1
    again = pascal_second_view(image1, labels1, seeds[1])
    np.testing.assert_array_equal(again[0].numpy(), image2.numpy())
    for k in TASKS:
        np.testing.assert_array_equal(again[1][k].numpy(), labels2[k].numpy())


def pascal_second_view(image, labels, seed):
    from mtpsl_tf.data.policies.mtl_pytorch import second_view
    return second_view(image, labels, seed)


def test_two_view_batches_for_pascal(prepared):
    data_dir, _ = prepared
    config = bundle_config(data_dir)
    bundle = pipeline.load(config)
    batches = list(pipeline.train_dataset(bundle, config, seed=0, initial_epoch=0, epochs=1, batch_size=2,
                                          two_views=True))
    assert len(batches) == 2
    for batch in batches:
        assert batch["image_aug"].shape == (2, 64, 48, 3)
        for k in TASKS:
            assert batch["labels_aug"][k].shape == batch["labels"][k].shape
            assert batch["labels_aug"][k].dtype == batch["labels"][k].dtype
        for a, b in zip(batch["labels"]["human_parts"].numpy(), batch["labels_aug"]["human_parts"].numpy()):
            assert np.all(a == -1) == np.all(b == -1)  # an image without people stays all ignore


# ------------------------------------------------------------------ end to end


def test_train_py_on_pascal_context_mtpsl_resnet18_aspp_evaluates_and_exports(prepared, tmp_path):
    """train.py --dataset=pascal_context --method=mtpsl --backbone=resnet18_aspp on the fake
    release (tiny; two views from the mtl_pytorch policy, the ResNet-18 mapping net): the 5 tasks
    with their loss weights, the reference's optimiser settings, Delta-MTL against Tab. 6's
    random-label STL row, metrics of all five tasks (training-time and the paper protocol at the
    images' own sizes), and a SavedModel export holding the network alone (no mapping net /
    FiLM variables). One run: each train.py run costs a minute of CI."""
    import subprocess
    import sys

    from mtpsl_export.export import export_model

    data_dir, _ = prepared
    model_dir = tmp_path / "run"
    flags = ["--dataset=pascal_context", f"--data_dir={data_dir}", "--backbone=resnet18_aspp",
             "--filters=4,4,8,8,8", "--height=32", "--width=32", "--setting=randomlabels", "--method=mtpsl",
             "--con_weight=1.0", "--batch_size=2", "--eval_batch_size=2",
             "--epochs=1", "--lr_schedule=poly", "--weight_decay=1e-4", "--verbose=0", "--tensorboard_images=1",
             f"--model_dir={model_dir}"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, os.path.join(root, "train.py"), *flags], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((model_dir / "metrics.json").read_text())
    metrics = set(report["last"]["metrics"])
    assert {"semseg/miou", "human_parts/miou", "normals/mean", "sal/miou", "sal/maxF", "edge/odsF"} <= metrics
    assert report["stl_reference"]["edge/odsF"] == pytest.approx(0.668)  # Tab. 6, random-label STL row
    assert np.isfinite(report["last"]["delta_mtl"])
    train = json.loads((model_dir / "history.json").read_text())[0]["train"]
    assert train["consistency"] > 0 and np.isfinite(train["total"])
    # the total is the weighted sum of the named (unweighted) task losses plus the consistency
    # term (--con_weight=1.0, no ramp-up)
    weights = {"semseg": 1, "human_parts": 2, "normals": 10, "sal": 5, "edge": 50}
    tasks = sum(w * train[f"{t}_loss"] for t, w in weights.items())
    assert train["total"] == pytest.approx(tasks + train["consistency"], rel=1e-3)
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir / "checkpoints")))
    names = list(reader.get_variable_to_shape_map())
    assert any(n.startswith("method_0/") and "film" in n for n in names)  # the mapping net's FiLM tables
    assert any(n.startswith("optimizer_film/") for n in names)

    # The published protocol (each test image at its own size) scores all five tasks.
    from mtpsl_tf.evaluate import evaluate_model_dir

    paper = evaluate_model_dir(str(model_dir), "latest", protocol="paper", workers=1)
    assert paper["protocol"] == "paper"
    for key in ("semseg/miou", "human_parts/miou", "normals/mean", "sal/miou", "sal/maxF", "edge/odsF"):
        assert np.isfinite(paper["metrics"][key]), key

    out = tmp_path / "export"
    export_model(str(model_dir), str(out), formats=("saved_model",), num_verify=2, which="latest")
    from mtpsl_tf.training.restore import load_network

    names = [name for name, _ in tf.train.list_variables(str(out / "saved_model" / "variables" / "variables"))]
    network = load_network(str(model_dir), which="latest").network
    # exactly the network's variables: nothing of the method's (mapping net, FiLM tables)
    assert len([n for n in names if n.endswith("VARIABLE_VALUE")]) == len(network.variables)
    assert not [n for n in names if "film" in n.lower() or "mapping" in n.lower() or "method_" in n], names
