"""TFDS builders for NYU-v2, Cityscapes and PASCAL-Context, on tiny fake releases."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import fake_layouts
from mtpsl_datasets import cityscapes, nyuv2, pascal_context
from mtpsl_datasets.nyuv2.mtan_layout import ManualDirError, format_problems
from mtpsl_datasets.pascal_context import decode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREPARE = os.path.join(REPO, "datasets", "prepare.py")
NYU_COUNTS = {"train": 4, "val": 3}
CITY_COUNTS = {"train": 3, "val": 2}
PASCAL_COUNTS = {"train": 3, "val": 2}

def tiny_builder(base, counts):
    """`base` with small required split counts, unregistered. It keeps `base`'s module:
    TFDS locates a builder's files through its module's package."""
    with tfds.core.registered.skip_registration():
        return type(f"Tiny{base.__name__}", (base,),
                    {"SPLIT_COUNTS": counts, "__module__": base.__module__})


TinyNyuv2 = tiny_builder(nyuv2.MtpslNyuv2, NYU_COUNTS)
TinyCityscapes = tiny_builder(cityscapes.MtpslCityscapes, CITY_COUNTS)
TinyPascal = tiny_builder(pascal_context.MtpslPascalContext, PASCAL_COUNTS)


def tiny_city_config(num_classes):
    return cityscapes.CityscapesConfig(name=f"c{num_classes}_8x16", num_classes=num_classes,
                                       height=8, width=16)


def build(builder, manual_dir):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return {split: list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
            for split in builder.info.splits}


def by_index(examples):
    return sorted(examples, key=lambda e: int(e["index"]))


# ------------------------------------------------------------------ NYU-v2


@pytest.fixture(scope="module")
def nyu_built(tmp_path_factory):
    root = tmp_path_factory.mktemp("nyu")
    written = fake_layouts.write_nyuv2(root / "manual", NYU_COUNTS)
    builder = TinyNyuv2(data_dir=str(root / "data"))
    return written, build(builder, root / "manual"), builder


def test_nyuv2_round_trip(nyu_built):
    written, built, builder = nyu_built
    assert builder.is_prepared()
    assert {s: builder.info.splits[s].num_examples for s in ("train", "test")} == {
        "train": 4, "test": 3}
    for split, folder in [("train", "train"), ("test", "val")]:
        examples = by_index(built[split])
        assert [int(e["index"]) for e in examples] == list(range(NYU_COUNTS[folder]))
        for e, w in zip(examples, written[folder]):
            assert e["image"].dtype == np.float32 and e["image"].shape == (8, 12, 3)
            assert e["semantic"].dtype == np.int32 and e["semantic"].shape == (8, 12)
            assert e["depth"].dtype == np.float32 and e["depth"].shape == (8, 12, 1)
            assert e["normal"].dtype == np.float32 and e["normal"].shape == (8, 12, 3)
            np.testing.assert_array_equal(e["image"], w["image"])
            np.testing.assert_array_equal(e["semantic"], w["label"].astype(np.int32))
            np.testing.assert_array_equal(e["depth"], w["depth"])
            np.testing.assert_array_equal(e["normal"], w["normal"])
            # invalid markers survive
            assert e["semantic"][0, 0] == -1
            assert np.all(e["depth"][0, :2] == 0)
            assert np.all(e["normal"][1, :3] == 0)


def test_nyuv2_registered_name(nyu_built):
    _, _, builder = nyu_built
    assert nyuv2.MtpslNyuv2.name == "mtpsl_nyuv2"
    assert "mtpsl_nyuv2" in tfds.list_builders()
    assert builder.MANUAL_DOWNLOAD_INSTRUCTIONS and "1.0.0" in builder.RELEASE_NOTES


def test_nyuv2_release_counts_required(tmp_path):
    fake_layouts.write_nyuv2(tmp_path, {"train": 2, "val": 1})
    problems = nyuv2.validate_manual_dir(tmp_path)
    assert any("expected 795 files" in p and "got 2" in p for p in problems)
    assert f"{tmp_path / 'train' / 'label'}: missing 793 files (a label map, whole numbers in " \
           "[0, 12] or -1): 2.npy, 3.npy, 4.npy, 5.npy, ..., 794.npy" in problems


# ------------------------------------------------------------------ bad folders


def _break(root, how):
    """Damages a valid fake NYU release; returns (substrings the problem must contain)."""
    label = root / "train" / "label" / "2.npy"
    if how == "missing file":
        os.remove(root / "train" / "depth" / "1.npy")
        return [str(root / "train" / "depth" / "1.npy"), "missing file", "depth map"]
    if how == "wrong shape":
        np.save(root / "val" / "normal" / "0.npy", np.zeros((8, 12), np.float32))
        return [str(root / "val" / "normal" / "0.npy"), "shape (8, 12, 3)", "got shape (8, 12)"]
    if how == "label out of range":
        bad = np.load(label)
        bad[3, 3] = 13
        np.save(label, bad)
        return [str(label), "[0, 12] or -1", "[13]"]
    if how == "image out of range":
        np.save(root / "train" / "image" / "0.npy", np.full((8, 12, 3), 2.0, np.float32))
        return [str(root / "train" / "image" / "0.npy"), "in [0, 1]", "values in [2, 2]"]
    if how == "integer image":
        np.save(root / "train" / "image" / "3.npy", np.zeros((8, 12, 3), np.uint8))
        return [str(root / "train" / "image" / "3.npy"), "floating-point", "got dtype uint8"]
    if how == "count mismatch":
        np.save(root / "train" / "label" / "4.npy", np.zeros((8, 12)))
        return [str(root / "train" / "label" / "4.npy"), "unexpected file"]
    if how == "empty dir":
        for name in os.listdir(root / "val" / "depth"):
            os.remove(root / "val" / "depth" / name)
        return [str(root / "val" / "depth"), "no .npy files"]
    if how == "missing dir":
        for name in os.listdir(root / "val" / "normal"):
            os.remove(root / "val" / "normal" / name)
        os.rmdir(root / "val" / "normal")
        return [str(root / "val" / "normal"), "missing folder"]
    raise AssertionError(how)


BREAKAGES = ["missing file", "wrong shape", "label out of range", "image out of range",
             "integer image", "count mismatch", "empty dir", "missing dir"]


@pytest.mark.parametrize("how", BREAKAGES)
def test_nyuv2_bad_folder_reported(tmp_path, how):
    fake_layouts.write_nyuv2(tmp_path, NYU_COUNTS)
    assert nyuv2.validate_manual_dir(tmp_path, NYU_COUNTS) == []
    expected = _break(tmp_path, how)
    problems = nyuv2.validate_manual_dir(tmp_path, NYU_COUNTS)
    assert any(all(s in p for s in expected) for p in problems), problems


def test_missing_and_empty_root(tmp_path):
    assert "missing folder" in nyuv2.validate_manual_dir(tmp_path / "absent")[0]
    problems = cityscapes.validate_manual_dir(tmp_path)
    assert any(str(tmp_path / "train") in p and "missing folder" in p for p in problems)


def test_builder_refuses_bad_folder(tmp_path):
    fake_layouts.write_nyuv2(tmp_path / "manual", NYU_COUNTS)
    expected = _break(tmp_path / "manual", "label out of range")
    builder = TinyNyuv2(data_dir=str(tmp_path / "data"))
    with pytest.raises(ManualDirError) as err:
        build(builder, tmp_path / "manual")
    assert all(s in str(err.value) for s in expected)
    root = str(tmp_path / "manual")
    assert str(err.value) == format_problems(
        builder.name, root, nyuv2.validate_manual_dir(root, NYU_COUNTS))
    assert not builder.is_prepared()
    assert not os.path.exists(builder.data_dir)


def test_interrupted_build_leaves_nothing_prepared(tmp_path, monkeypatch):
    fake_layouts.write_nyuv2(tmp_path / "manual", NYU_COUNTS)
    original = nyuv2.nyuv2.load_example

    def fail_midway(split_dir, i):
        if i == 2:
            raise RuntimeError("interrupted")
        return original(split_dir, i)

    monkeypatch.setattr(nyuv2.nyuv2, "load_example", fail_midway)
    builder = TinyNyuv2(data_dir=str(tmp_path / "data"))
    with pytest.raises(RuntimeError, match="interrupted"):
        build(builder, tmp_path / "manual")
    assert not os.path.exists(builder.data_dir)
    assert not TinyNyuv2(data_dir=str(tmp_path / "data")).is_prepared()


def test_killed_prepare_leaves_nothing_prepared(tmp_path):
    """A process killed mid-build (no cleanup runs) leaves only an `.incomplete` folder."""
    fake_layouts.write_nyuv2(tmp_path / "manual", NYU_COUNTS)
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import test_builders as t
        from mtpsl_datasets.nyuv2 import nyuv2 as m
        original = m.load_example
        def die(split_dir, i):
            if i == 2:
                os._exit(3)
            return original(split_dir, i)
        m.load_example = die
        t.build(t.TinyNyuv2(data_dir={str(tmp_path / 'data')!r}), {str(tmp_path / 'manual')!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 3, result.stderr
    builder = TinyNyuv2(data_dir=str(tmp_path / "data"))
    assert not builder.is_prepared()
    assert not os.path.exists(builder.data_dir)
    leftovers = os.listdir(os.path.dirname(builder.data_dir))
    assert leftovers and all("incomplete" in name for name in leftovers)


# ------------------------------------------------------------------ prepare.py


def run_prepare(*args):
    return subprocess.run([sys.executable, PREPARE, *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_prepare_script_rejects_bad_folder(tmp_path):
    fake_layouts.write_nyuv2(tmp_path / "manual", NYU_COUNTS)
    os.remove(tmp_path / "manual" / "val" / "image" / "1.npy")
    result = run_prepare("--dataset=nyuv2", f"--manual_dir={tmp_path / 'manual'}",
                         f"--data_dir={tmp_path / 'data'}")
    assert result.returncode != 0
    # The release counts apply here, and the damaged file is named.
    assert "expected 795 files 0.npy..794.npy; got 4 .npy files" in result.stderr
    assert "val/image: expected 654 files 0.npy..653.npy; got 2 .npy files" in result.stderr
    assert f"{tmp_path / 'manual' / 'val' / 'image'}: missing 652 files (an RGB image, float " \
           "in [0, 1]): 1.npy, 3.npy, 4.npy, 5.npy, ..., 653.npy" in result.stderr
    assert not os.path.exists(tmp_path / "data" / "mtpsl_nyuv2")
    assert not nyuv2.MtpslNyuv2(data_dir=str(tmp_path / "data")).is_prepared()


def test_prepare_script_cityscapes_wrong_size_and_config(tmp_path):
    fake_layouts.write_cityscapes(tmp_path / "manual", CITY_COUNTS)
    result = run_prepare("--dataset=cityscapes", "--config=c19_256x512",
                         f"--manual_dir={tmp_path / 'manual'}", f"--data_dir={tmp_path / 'data'}")
    assert result.returncode != 0
    image0 = tmp_path / "manual" / "train" / "image" / "0.npy"
    assert f"{image0}: expected an RGB image, float in [0, 1], shape (256, 512, 3); " \
           "got shape (8, 16, 3)" in result.stderr
    assert not os.path.exists(tmp_path / "data" / "mtpsl_cityscapes" / "c19_256x512")
    result = run_prepare("--dataset=cityscapes", "--config=c3_1x1", "--manual_dir=x",
                         f"--data_dir={tmp_path / 'data'}")
    assert result.returncode != 0 and "c7_128x256" in result.stderr


def test_prepare_function_builds_valid_folder(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "datasets"))
    try:
        import prepare
    finally:
        sys.path.remove(os.path.join(REPO, "datasets"))
    fake_layouts.write_nyuv2(tmp_path / "manual", NYU_COUNTS)
    bad = TinyNyuv2(data_dir=str(tmp_path / "bad"))
    os.remove(tmp_path / "manual" / "train" / "normal" / "3.npy")
    problems = prepare.prepare(bad, str(tmp_path / "manual"))
    assert any("normal/3.npy: missing file" in p for p in problems)
    assert not os.path.exists(tmp_path / "bad")
    fake_layouts.write_nyuv2(tmp_path / "manual", NYU_COUNTS)
    good = TinyNyuv2(data_dir=str(tmp_path / "data"))
    assert prepare.prepare(good, str(tmp_path / "manual")) == []
    assert good.is_prepared() and good.info.splits["test"].num_examples == 3


# ------------------------------------------------------------------ Cityscapes


@pytest.mark.parametrize("num_classes", [7, 19])
def test_cityscapes_round_trip(tmp_path, num_classes):
    written = fake_layouts.write_cityscapes(tmp_path / "manual", CITY_COUNTS)
    builder = TinyCityscapes(data_dir=str(tmp_path / "data"), config=tiny_city_config(num_classes))
    built = build(builder, tmp_path / "manual")
    assert builder.info.features["image"].shape == (8, 16, 3)
    for split, folder in [("train", "train"), ("test", "val")]:
        examples = by_index(built[split])
        assert [int(e["index"]) for e in examples] == list(range(CITY_COUNTS[folder]))
        for e, w in zip(examples, written[folder]):
            np.testing.assert_array_equal(e["image"], w["image"])
            assert e["semantic"].dtype == np.int32
            np.testing.assert_array_equal(e["semantic"], w[f"label_{num_classes}"].astype(np.int32))
            np.testing.assert_array_equal(e["depth"], w["depth"])
            assert e["semantic"][0, 0] == -1 and np.all(e["depth"][0, :2] == 0)


def test_cityscapes_configs_and_label_range(tmp_path):
    names = [c.name for c in cityscapes.MtpslCityscapes.BUILDER_CONFIGS]
    assert names == ["c7_128x256", "c19_128x256", "c7_256x512", "c19_256x512"]
    fake_layouts.write_cityscapes(tmp_path, CITY_COUNTS)
    # a 19-class label is out of range for the 7-class config; the 19-class one is fine
    path = tmp_path / "val" / "label_7" / "1.npy"
    labels = np.load(path)
    labels[2, 2] = 9
    np.save(path, labels)
    assert cityscapes.validate_manual_dir(tmp_path, tiny_city_config(19), CITY_COUNTS) == []
    problems = cityscapes.validate_manual_dir(tmp_path, tiny_city_config(7), CITY_COUNTS)
    assert problems == [f"{path}: expected a label map, whole numbers in [0, 6] or -1, "
                        "shape (8, 16); got label values [9] outside [0, 6]"]
    # depth must be [H, W, 1], as the authors' loader reads it
    np.save(tmp_path / "train" / "depth" / "0.npy", np.zeros((8, 16), np.float32))
    problems = cityscapes.validate_manual_dir(tmp_path, tiny_city_config(19), CITY_COUNTS)
    assert any("depth/0.npy" in p and "shape (8, 16, 1)" in p for p in problems)


# ------------------------------------------------------------------ PASCAL decoding


def digit_grid(rows: str, dtype) -> np.ndarray:
    """An array from whitespace-separated rows of one-digit values, e.g. "0055 0075"."""
    return np.array([[int(c) for c in row] for row in rows.split()], dtype)


def test_edges_match_reference():
    """Literal result of the reference (cv2.Laplacian + skimage thin) on a small map."""
    label_map = digit_grid("""
        000055555
        000055555
        007775555
        007777555
        227777755
        222277775
        222222222""", np.uint16)
    boundary = digit_grid("""
        000110000
        001110000
        011111000
        111001100
        111100110
        001111111
        000011111""", bool)
    edges = digit_grid("""
        000000000
        000000000
        001110000
        010001000
        001000100
        000100110
        000011000""", np.int32)
    np.testing.assert_array_equal(decode.laplacian_nonzero(label_map), boundary)
    out = decode.edges_from_label_map(label_map)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, edges)


def test_laplacian_border_is_reflected_without_the_edge_pixel():
    """cv2's default border (reflect-101) cancels at [0, 1] here; a replicated or
    symmetric border would not. Literal from cv2.Laplacian(label_map, cv2.CV_64F) != 0."""
    label_map = np.array([[3, 2, 3, 3], [3, 1, 3, 3], [3, 3, 3, 3]], np.uint16)
    np.testing.assert_array_equal(decode.laplacian_nonzero(label_map),
                                  [[1, 0, 1, 0], [1, 1, 1, 0], [0, 1, 0, 0]])


def test_thin_keeps_lines_and_removes_blobs():
    line = np.zeros((5, 7), bool)
    line[2, 1:6] = True
    np.testing.assert_array_equal(decode.thin(line), line)
    block = np.zeros((7, 7), bool)
    block[1:6, 1:6] = True
    thinned = decode.thin(block)
    assert 0 < thinned.sum() < 5 and np.all(block[thinned])


def test_normals_saliency_semseg_decoding():
    png = np.array([[[0, 128, 255], [255, 0, 128]]], np.uint8)
    label_map = np.array([[4, 1]])  # 4 (ceiling) is kept, 1 (accordion) is not
    normals = decode.normals_from_png(png, label_map)
    assert normals.dtype == np.float32
    np.testing.assert_array_equal(
        normals[0, 0], 2.0 * np.array([0, 128, 255], np.float32) / 255.0 - 1.0)
    assert normals[0, 0, 0] == -1.0 and normals[0, 0, 2] == 1.0
    np.testing.assert_array_equal(normals[0, 1], [0.0, 0.0, 0.0])
    sal = decode.saliency_from_png(np.array([[0, 127, 128, 255]], np.uint8))
    np.testing.assert_array_equal(sal, [[0, 0, 1, 1]])
    np.testing.assert_array_equal(decode.semseg_from_png(np.array([[0, 20, 255]], np.uint8)),
                                  [[0, 20, 255]])
    assert {4, 331, 427}.issubset(decode.NORMALS_VALID_CLASSES)
    assert len(set(decode.NORMALS_VALID_CLASSES)) == 170


def test_human_parts_decoding(tmp_path):
    h, w = 4, 5
    person = np.zeros((h, w), np.uint8)
    person[1:, 1:] = 1
    head, arm = np.zeros((2, h, w), np.uint8)
    head[1:3, 1:3] = 1
    arm[2:, 2:] = 1  # overlaps the head: written later, so it wins
    path = tmp_path / "p.mat"
    fake_layouts.write_parts_mat(str(path), [
        (12, np.ones((h, w), np.uint8), [("head", np.ones((h, w), np.uint8))]),  # not a person
        (15, person, [("head", head), ("llarm", arm)]),
    ])
    objects = decode.part_objects(pascal_context.pascal_context._loadmat(str(path)))
    assert decode.has_human_parts(objects)
    expected = np.zeros((h, w), np.int32)
    expected[head.astype(bool)] = 1
    expected[arm.astype(bool)] = 4
    np.testing.assert_array_equal(decode.human_parts_from_objects(objects, (h, w)), expected)
    # a person with an empty mask does not count: all zero, as in the reference
    fake_layouts.write_parts_mat(str(path), [(15, np.zeros((h, w)), [("head", head)])])
    objects = decode.part_objects(pascal_context.pascal_context._loadmat(str(path)))
    assert not decode.has_human_parts(objects)
    assert not decode.human_parts_from_objects(objects, (h, w)).any()
    assert [decode.part_label(n) for n in ("hair", "neck", "ruarm", "rhand", "luleg", "lfoot")] \
        == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="unknown human part name 'tail'"):
        decode.part_label("tail")


# ------------------------------------------------------------------ PASCAL builder


@pytest.fixture(scope="module")
def pascal_built(tmp_path_factory):
    root = tmp_path_factory.mktemp("pascal")
    written = fake_layouts.write_pascal_context(root / "manual")
    builder = TinyPascal(data_dir=str(root / "data"))
    return root / "manual", written, build(builder, root / "manual"), builder


def test_pascal_round_trip(pascal_built):
    manual, written, built, builder = pascal_built
    assert builder.info.splits["train"].num_examples == 3
    assert builder.info.splits["test"].num_examples == 2
    for split, split_file in [("train", "train"), ("test", "val")]:
        ids = pascal_context.read_split(str(manual), split_file)
        examples = by_index(built[split])
        assert [e["image_id"].decode() for e in examples] == ids
        for index, e in enumerate(examples):
            w = written[ids[index]]
            h, wd = w["size"]
            assert int(e["index"]) == index
            with Image.open(manual / "JPEGImages" / f"{ids[index]}.jpg") as im:
                np.testing.assert_array_equal(e["image"], np.array(im.convert("RGB")))
            assert e["image"].dtype == np.uint8 and e["image"].shape == (h, wd, 3)
            np.testing.assert_array_equal(e["semseg"], w["semseg"].astype(np.int32))
            assert e["semseg"][0, 0] == 255
            np.testing.assert_array_equal(e["normals"],
                                          decode.normals_from_png(w["normals_png"], w["label_map"]))
            assert np.all(e["normals"][w["label_map"] == 1] == 0)
            assert np.any(e["normals"][w["label_map"] == 4] != 0)
            np.testing.assert_array_equal(e["sal"], (w["sal_png"] > 127.5).astype(np.int32))
            assert list(e["sal"][0, :2]) == [0, 1]
            np.testing.assert_array_equal(e["edge"], decode.edges_from_label_map(w["label_map"]))
            assert e["edge"].any()
            assert bool(e["has_human_parts"]) == w["with_person"]
            if w["with_person"]:
                # the torso, painted after the head, overwrites it where they overlap
                assert e["human_parts"][1, 1] == 1 and e["human_parts"][2, 1] == 2
                assert e["human_parts"][-1, -1] == 6 and e["human_parts"][0].max() == 0
            else:
                assert not e["human_parts"].any()  # the dog's "head" part is not used
            for key in ("semseg", "human_parts", "sal", "edge"):
                assert e[key].dtype == np.int32 and e[key].shape == (h, wd)


def test_pascal_semseg_prefers_voc12(tmp_path):
    written = fake_layouts.write_pascal_context(tmp_path)
    image_id = "2008_000001"
    voc = np.zeros(written[image_id]["size"], np.uint8) + 3
    Image.fromarray(voc).save(tmp_path / "semseg" / "VOC12" / f"{image_id}.png")
    example = pascal_context.load_example(str(tmp_path), image_id, 0)
    np.testing.assert_array_equal(example["semseg"], voc.astype(np.int32))


PASCAL_BREAKAGES = ["missing jpeg", "semseg shape", "semseg range", "normals gray", "no LabelMap",
                    "fractional LabelMap", "missing split", "missing sal", "missing dir"]


@pytest.mark.parametrize("how", PASCAL_BREAKAGES)
def test_pascal_bad_folder_reported(tmp_path, how):
    fake_layouts.write_pascal_context(tmp_path)
    assert pascal_context.validate_manual_dir(tmp_path, PASCAL_COUNTS) == []
    i = "2008_000002"
    if how == "missing jpeg":
        os.remove(tmp_path / "JPEGImages" / f"{i}.jpg")
        expected = [f"JPEGImages/{i}.jpg: missing file", "a JPEG image"]
    elif how == "semseg shape":
        Image.fromarray(np.zeros((3, 3), np.uint8)).save(
            tmp_path / "semseg" / "pascal-context" / f"{i}.png")
        expected = [f"pascal-context/{i}.png", "of shape (10, 11)", "got shape (3, 3)"]
    elif how == "semseg range":
        png = tmp_path / "semseg" / "pascal-context" / f"{i}.png"
        Image.fromarray(np.full((10, 11), 40, np.uint8)).save(png)
        expected = [str(png), "[0, 20] or 255", "[40]"]
    elif how == "normals gray":
        gray = Image.fromarray(np.zeros((10, 11), np.uint8))
        gray.save(tmp_path / "normals_distill" / f"{i}.png")
        expected = [f"normals_distill/{i}.png", "(10, 11, 3)", "got shape (10, 11)"]
    elif how == "no LabelMap":
        import scipy.io
        scipy.io.savemat(tmp_path / "pascal-context" / "trainval" / f"{i}.mat", {"x": 1})
        expected = [f"trainval/{i}.mat", "expected a variable LabelMap"]
    elif how == "fractional LabelMap":
        import scipy.io
        mat = tmp_path / "pascal-context" / "trainval" / f"{i}.mat"
        scipy.io.savemat(mat, {"LabelMap": np.full((10, 11), 4.0)})  # doubles are fine
        assert pascal_context.validate_manual_dir(tmp_path, PASCAL_COUNTS) == []
        scipy.io.savemat(mat, {"LabelMap": np.full((10, 11), 4.5)})
        expected = [str(mat), "whole-number class ids", "got dtype float64"]
    elif how == "missing split":
        os.remove(tmp_path / "ImageSets" / "Context" / "val.txt")
        expected = ["ImageSets/Context/val.txt: missing file"]
    elif how == "missing sal":
        os.remove(tmp_path / "sal_distill" / f"{i}.png")
        expected = [f"sal_distill/{i}.png: missing file"]
    else:
        expected = [f"{tmp_path / 'nope'}: missing folder"]
        tmp_path = tmp_path / "nope"
    problems = pascal_context.validate_manual_dir(tmp_path, PASCAL_COUNTS)
    assert any(all(s in p for s in expected) for p in problems), problems


def test_prepare_script_rejects_bad_pascal(tmp_path):
    fake_layouts.write_pascal_context(tmp_path / "manual")
    os.remove(tmp_path / "manual" / "human_parts" / "2009_000001.mat")
    result = run_prepare("--dataset=pascal_context", f"--manual_dir={tmp_path / 'manual'}",
                         f"--data_dir={tmp_path / 'data'}")
    assert result.returncode != 0
    assert "human_parts/2009_000001.mat: missing file (a Pascal-Part .mat annotation)" \
        in result.stderr
    assert "expected 4998 image ids; got 3" in result.stderr
    assert not os.path.exists(tmp_path / "data" / "mtpsl_pascal_context")
