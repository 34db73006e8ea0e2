"""The synthetic scene renderer (mtpsl_datasets.synthetic.render) and its TFDS builder."""

import numpy as np
import pytest

from mtpsl_datasets.synthetic import render as synthetic
from mtpsl_datasets.synthetic.render import (
    CLASS_NAMES, FLOOR, NUM_CLASSES, WINDOW, Material, Scene, Sphere, backproject,
    render_example, render_scene, sample_scene,
)

H, W = 48, 64
INDICES = range(6)


@pytest.fixture(scope="module")
def examples():
    """(index, scene, rendered example) for a few examples of seed 0."""
    return [(i, sample_scene(i, 0), render_example(i, H, W, 0)) for i in INDICES]


def _empty_room(*extra_spheres):
    """A 4 x 3 x 5 room, camera at (2, 1.5, 4) looking straight down -z (no rotation)."""
    materials = tuple(Material(label, (0.5, 0.5, 0.5)) for label in (FLOOR, 2, 11, 11, 11, 11))
    materials += (Material(6, (0.9, 0.1, 0.1)),)
    return Scene(size=np.array([4.0, 3.0, 5.0]), origin=np.array([2.0, 1.5, 4.0]),
                 rotation=np.eye(3), light=np.array([2.0, 2.7, 2.0]), materials=materials,
                 boxes=(), spheres=tuple(extra_spheres), cylinders=(), windows=(), noise_seed=0)


# --------------------------------------------------------------------------- API contract
def test_class_names_match_nyu_13():
    assert NUM_CLASSES == len(CLASS_NAMES) == 13
    assert CLASS_NAMES[FLOOR] == "floor" and CLASS_NAMES[WINDOW] == "window"


def test_dtypes_shapes_and_ranges(examples):
    for _, _, ex in examples:
        assert set(ex) == {"image", "semantic", "depth", "normal"}
        assert ex["image"].dtype == np.float32 and ex["image"].shape == (H, W, 3)
        assert ex["semantic"].dtype == np.int32 and ex["semantic"].shape == (H, W)
        assert ex["depth"].dtype == np.float32 and ex["depth"].shape == (H, W, 1)
        assert ex["normal"].dtype == np.float32 and ex["normal"].shape == (H, W, 3)
        assert 0.0 <= ex["image"].min() and ex["image"].max() <= 1.0
        assert ex["image"].std() > 0.05  # not a flat picture
        assert -1 <= ex["semantic"].min() and ex["semantic"].max() < NUM_CLASSES
        assert 0.0 <= ex["depth"].min() and ex["depth"].max() < 12.0
        assert len(np.unique(ex["semantic"])) >= 4


def test_deterministic_by_seed_and_index():
    a = render_example(3, H, W, seed=5)
    b = render_example(3, H, W, seed=5)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    for other in (render_example(4, H, W, seed=5), render_example(3, H, W, seed=6)):
        assert not np.array_equal(a["depth"], other["depth"])
        assert not np.array_equal(a["image"], other["image"])


def test_same_scene_at_any_resolution():
    """The scene depends on (seed, index) only: a 2x render point-samples the same geometry."""
    small, big = render_example(2, 24, 32, 0), render_example(2, 48, 64, 0)
    # Pixel centre (i + .5) of the small image lies between big pixels; compare label agreement.
    agree = np.mean(small["semantic"] == big["semantic"][::2, ::2])
    assert agree > 0.8


def test_invalid_markers_consistent(examples):
    holes = ignored = 0
    for _, _, ex in examples:
        invalid = ex["depth"][..., 0] == 0
        np.testing.assert_array_equal(invalid, np.all(ex["normal"] == 0, axis=-1))
        norms = np.linalg.norm(ex["normal"][~invalid], axis=-1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
        holes += invalid.sum()
        ignored += (ex["semantic"] == -1).sum()
        # The depth sensor sees through windows.
        assert np.all(invalid[ex["semantic"] == WINDOW])
    assert holes > 0 and ignored > 0


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="index"):
        render_example(-1, H, W, 0)
    with pytest.raises(ValueError, match="seed"):
        render_example(0, H, W, -3)
    with pytest.raises(ValueError, match="height"):
        render_example(0, 1, W, 0)
    with pytest.raises(ValueError, match="split"):
        synthetic.split_seed(0, "val")
    with pytest.raises(ValueError, match=r"\[-1, 13\)"):
        synthetic.colourise_semantic(np.array([[13]]))


def test_split_seeds_differ():
    assert synthetic.split_seed(7, "train") == 7
    assert synthetic.split_seed(7, "test") != 7
    a = render_example(0, H, W, synthetic.split_seed(0, "train"))
    b = render_example(0, H, W, synthetic.split_seed(0, "test"))
    assert not np.array_equal(a["depth"], b["depth"])


# --------------------------------------------------------------------------- geometry
def test_depth_is_z_depth_and_normal_faces_camera():
    """Camera 4 m from the far wall, looking straight at it: z-depth 4 everywhere on it."""
    ex = render_scene(_empty_room(), H, W)
    region = (slice(H // 4, 3 * H // 4), slice(W // 4, 3 * W // 4))
    valid = ex["depth"][region][..., 0] > 0  # a sensor hole may fall here
    assert valid.mean() > 0.5
    np.testing.assert_allclose(ex["depth"][region][valid], 4.0, rtol=1e-6)
    np.testing.assert_allclose(ex["normal"][region][valid], np.broadcast_to([0, 0, 1], (valid.sum(), 3)),
                               atol=1e-6)


def test_sphere_normal_and_depth():
    sphere = Sphere(np.array([2.0, 1.5, 2.0]), 0.5, 6)
    scene = _empty_room(sphere)
    hits, rays = synthetic._cast(scene, H, W)  # the raw hits, free of sensor holes
    i, j = H // 2, W // 2
    point = scene.origin + hits.t[i, j] * rays[i, j]
    np.testing.assert_allclose(np.linalg.norm(point - sphere.centre), 0.5, rtol=1e-9)
    np.testing.assert_allclose(hits.normal[i, j], (point - sphere.centre) / 0.5, atol=1e-9)
    assert hits.normal[i, j] @ rays[i, j] < 0


def test_floor_normals_point_up_given_camera_tilt(examples):
    for _, scene, ex in examples:
        floor = (ex["semantic"] == FLOOR) & (ex["depth"][..., 0] > 0)
        assert floor.sum() > 50
        up_in_camera = scene.rotation.T @ np.array([0.0, 1.0, 0.0])
        np.testing.assert_allclose(ex["normal"][floor], np.broadcast_to(up_in_camera, (floor.sum(), 3)),
                                   atol=1e-6)
        assert up_in_camera[1] > 0.8 and up_in_camera[2] > 0  # tilted down: floor faces camera


def test_backprojected_floor_is_coplanar(examples):
    for _, scene, ex in examples:
        floor = (ex["semantic"] == FLOOR) & (ex["depth"][..., 0] > 0)
        points = backproject(ex["depth"])[floor]
        # World height of each point: the floor is y = 0.
        world = points @ scene.rotation.T + scene.origin
        np.testing.assert_allclose(world[:, 1], 0.0, atol=1e-5)
        # And a scene-free check: a least-squares plane fits the camera-space points exactly.
        centred = points - points.mean(0)
        normal = np.linalg.svd(centred, full_matrices=False)[2][-1]
        assert np.abs(centred @ normal).max() < 1e-5
        assert abs(abs(normal @ ex["normal"][floor][0]) - 1) < 1e-6


def _finite_difference_normals(depth):
    """Normals [H-2, W-2, 3] of the back-projected depth from central differences."""
    p = backproject(depth)
    right = p[1:-1, 2:] - p[1:-1, :-2]
    up = p[:-2, 1:-1] - p[2:, 1:-1]  # row index grows downwards
    n = np.cross(right, up)
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


def _planar_interior(ex):
    """Pixels [H-2, W-2] whose 3x3 neighbourhood is valid, has one normal and is planar."""
    depth, normal = ex["depth"][..., 0].astype(np.float64), ex["normal"].astype(np.float64)
    same = np.ones((H - 2, W - 2), bool)
    centre = normal[1:-1, 1:-1]
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            same &= np.all(np.abs(normal[1 + di: H - 1 + di, 1 + dj: W - 1 + dj] - centre) < 1e-6, -1)
            same &= depth[1 + di: H - 1 + di, 1 + dj: W - 1 + dj] > 0
    # On a plane, inverse depth is affine in pixel coordinates: zero second differences.
    inv = np.where(depth > 0, 1.0 / np.maximum(depth, 1e-9), 0.0)
    second_u = inv[1:-1, 2:] - 2 * inv[1:-1, 1:-1] + inv[1:-1, :-2]
    second_v = inv[2:, 1:-1] - 2 * inv[1:-1, 1:-1] + inv[:-2, 1:-1]
    tol = 1e-5 * np.abs(inv[1:-1, 1:-1])
    return same & (np.abs(second_u) < tol) & (np.abs(second_v) < tol)


def test_normals_agree_with_depth_finite_differences(examples):
    for _, _, ex in examples:
        mask = _planar_interior(ex)
        assert mask.mean() > 0.5  # most of a room is planar: the check is not vacuous
        fd = _finite_difference_normals(ex["depth"])[mask]
        given = ex["normal"][1:-1, 1:-1][mask]
        cosine = np.sum(fd * given, -1)
        assert np.degrees(np.arccos(np.clip(cosine, -1, 1))).max() < 0.5


# --------------------------------------------------------------------------- pictures
def test_colourise_semantic():
    label = np.array([[-1, 0], [4, 12]], np.int32)
    rgb = synthetic.colourise_semantic(label)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    np.testing.assert_array_equal(rgb[0, 0], 0)
    assert len({tuple(c) for c in rgb.reshape(-1, 3)}) == 4


def test_figure_script_writes_png(tmp_path):
    from PIL import Image

    out = tmp_path / "fig.png"
    synthetic.main(["--figure", str(out), "--num", "2", "--height", "16", "--width", "24"])
    with Image.open(out) as img:
        assert img.size == (4 * 24, 2 * 16) and img.mode == "RGB"


# --------------------------------------------------------------------------- TFDS builder
def test_tfds_builder_matches_renderer(tmp_path):
    import tensorflow_datasets as tfds

    from mtpsl_datasets.synthetic import MtpslSynthetic, SyntheticConfig

    config = SyntheticConfig(name="tiny_test", height=16, width=24, num_train=3, num_test=2, seed=11)
    builder = MtpslSynthetic(config=config, data_dir=str(tmp_path))
    builder.download_and_prepare()
    assert builder.info.splits["train"].num_examples == 3
    assert builder.info.splits["test"].num_examples == 2
    for split, num in (("train", 3), ("test", 2)):
        seen = set()
        for ex in tfds.as_numpy(builder.as_dataset(split=split)):
            index = int(ex["index"])
            seen.add(index)
            want = render_example(index, 16, 24, synthetic.split_seed(11, split))
            for key, value in want.items():
                assert ex[key].dtype == value.dtype
                np.testing.assert_array_equal(ex[key], value)
            if split == "test":  # test examples come from another seed stream
                assert not np.array_equal(ex["depth"], render_example(index, 16, 24, 11)["depth"])
        assert seen == set(range(num))


def test_tfds_predefined_configs_and_validation():
    from mtpsl_datasets.synthetic import MtpslSynthetic, SyntheticConfig

    configs = {c.name: c for c in MtpslSynthetic.BUILDER_CONFIGS}
    assert (configs["small"].height, configs["small"].width) == (64, 96)
    nyu = configs["nyu_size"]
    assert (nyu.height, nyu.width, nyu.num_train, nyu.num_test) == (288, 384, 795, 654)
    assert MtpslSynthetic.name == "mtpsl_synthetic"
    assert str(MtpslSynthetic.VERSION) in MtpslSynthetic.RELEASE_NOTES
    with pytest.raises(ValueError, match="num_train"):
        SyntheticConfig(name="bad", num_train=0)
    with pytest.raises(ValueError, match="height"):
        SyntheticConfig(name="bad", height=1.5)
