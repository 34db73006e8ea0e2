"""Tests of mtpsl_tf.data.settings: parsing, generated masks, the authors' split files."""

import json

import numpy as np
import pytest

from mtpsl_tf.data import settings
from mtpsl_tf.data.settings import Setting, label_masks, masks_from_split_file, parse_setting

NYU = ("semantic", "depth", "normal")
CITYSCAPES = ("semantic", "depth")
PASCAL = ("semantic", "human_parts", "normal", "saliency", "edge")
PASCAL_KEYS = {"semantic": "semseg", "human_parts": "human_parts", "normal": "normals",
               "saliency": "sal", "edge": "edge"}


def pascal_image_ids(path):
    """The dataset's ordered image ids: every id in the json, sorted (like the train list)."""
    with open(path) as f:
        data = json.load(f)
    return sorted(set().union(*map(set, data.values()))), data


# ---------- parsing ----------
@pytest.mark.parametrize(
    "text,want",
    [
        ("full", Setting("full")),
        ("onelabel", Setting("onelabel")),
        (" randomlabels ", Setting("randomlabels")),
        ("ratio=1:9", Setting("ratio", ratio=(1.0, 9.0))),
        ("ratio=1:1:2", Setting("ratio", ratio=(1.0, 1.0, 2.0))),
        ("ratio=0.5:1.5", Setting("ratio", ratio=(0.5, 1.5))),
        ("ssl=0.3333", Setting("ssl", fraction=0.3333)),
        ("ssl=1/3", Setting("ssl", fraction=1 / 3)),
        ("ssl=0", Setting("ssl", fraction=0.0)),
        ("file=/a/b=c.npy", Setting("file", path="/a/b=c.npy")),
    ],
)
def test_parse_setting(text, want):
    setting = parse_setting(text)
    assert setting == want
    assert parse_setting(str(setting)) == setting


@pytest.mark.parametrize(
    "text",
    ["", "fulll", "one label", "ratio", "ratio=", "ratio=1:", "ratio=1:-1", "ratio=a:b",
     "ratio=0:0", "ssl=", "ssl=1.5", "ssl=-0.1", "ssl=1/0", "ssl=abc", "file=", "seed=3"],
)
def test_malformed_settings_raise_naming_the_string_and_forms(text):
    with pytest.raises(ValueError) as error:
        parse_setting(text)
    message = str(error.value)
    assert repr(text) in message
    for form in ("full", "onelabel", "randomlabels", "ratio=", "ssl=", "file="):
        assert form in message


def test_setting_is_frozen_and_checks_fields():
    setting = parse_setting("onelabel")
    with pytest.raises(AttributeError):
        setting.kind = "full"
    with pytest.raises(ValueError, match="unknown setting kind"):
        Setting("half")
    with pytest.raises(ValueError, match="fraction"):
        Setting("ssl")


# ---------- generated masks ----------
def test_full_is_all_ones():
    masks = label_masks("full", 7, NYU, seed=0)
    assert masks.dtype == np.uint8 and masks.shape == (7, 3) and masks.all()


def test_onelabel_nyu_is_balanced_265_each():
    masks = label_masks("onelabel", 795, NYU, seed=0)
    assert masks.dtype == np.uint8 and masks.shape == (795, 3)
    np.testing.assert_array_equal(masks.sum(axis=1), 1)
    np.testing.assert_array_equal(masks.sum(axis=0), [265, 265, 265])


def test_onelabel_uneven_split_differs_by_at_most_one():
    counts = label_masks("onelabel", 2975, CITYSCAPES, seed=1).sum(axis=0)
    assert sorted(counts) == [1487, 1488]
    counts = label_masks("onelabel", 11, PASCAL, seed=1).sum(axis=0)
    assert counts.sum() == 11 and counts.max() - counts.min() <= 1


def test_randomlabels_keep_1_to_t_minus_1_uniformly():
    masks = label_masks("randomlabels", 3000, NYU, seed=2)
    kept = masks.sum(axis=1)
    assert kept.min() == 1 and kept.max() == 2
    # 1 and 2 kept tasks equally likely; every task equally likely (binomial sd ~ 27).
    assert abs((kept == 1).mean() - 0.5) < 0.05
    np.testing.assert_allclose(masks.mean(axis=0), 0.5, atol=0.05)
    pascal = label_masks("randomlabels", 2000, PASCAL, seed=2).sum(axis=1)
    assert set(np.unique(pascal)) == {1, 2, 3, 4}


def test_randomlabels_needs_two_tasks():
    with pytest.raises(ValueError, match="at least 2 tasks"):
        label_masks("randomlabels", 10, ("semantic",), seed=0)


@pytest.mark.parametrize(
    "text,tasks,n,counts",
    [
        ("ratio=1:9", CITYSCAPES, 2975, [298, 2677]),  # 297.5 -> 298, 2677.5 -> 2677 (tie: first)
        ("ratio=9:1", CITYSCAPES, 100, [90, 10]),
        ("ratio=1:1:2", NYU, 10, [3, 2, 5]),  # quotas 2.5, 2.5, 5: the extra goes to the first
        ("ratio=1:2:3", NYU, 795, [133, 265, 397]),  # 132.5, 265, 397.5
    ],
)
def test_ratio_one_task_per_image_with_proportional_counts(text, tasks, n, counts):
    masks = label_masks(text, n, tasks, seed=3)
    np.testing.assert_array_equal(masks.sum(axis=1), 1)
    np.testing.assert_array_equal(masks.sum(axis=0), counts)


def test_ratio_must_match_the_task_count():
    with pytest.raises(ValueError, match="3 parts but the dataset has 2 tasks"):
        label_masks("ratio=1:1:1", 10, CITYSCAPES, seed=0)


def test_ssl_fraction_of_rows_fully_labelled():
    masks = label_masks("ssl=0.3333", 795, NYU, seed=4)
    rows = masks.sum(axis=1)
    assert set(np.unique(rows)) == {0, 3}
    assert (rows == 3).sum() == round(0.3333 * 795) == 265
    assert (label_masks("ssl=1/3", 9, NYU, seed=4).sum(axis=1) == 3).sum() == 3


@pytest.mark.parametrize("text", ["onelabel", "randomlabels", "ratio=1:2", "ssl=0.5"])
def test_generated_masks_deterministic_by_seed_and_differ_across_seeds(text):
    a = label_masks(text, 200, CITYSCAPES, seed=10)
    np.testing.assert_array_equal(a, label_masks(text, 200, CITYSCAPES, seed=10))
    assert not np.array_equal(a, label_masks(text, 200, CITYSCAPES, seed=11))


@pytest.mark.parametrize(
    "text,n,tasks,task",
    [
        ("ratio=1:0", 50, CITYSCAPES, "'depth'"),
        ("ratio=0:1:1", 50, NYU, "'semantic'"),
        ("ssl=0", 50, NYU, "'semantic'"),
        ("ssl=0.001", 50, NYU, "'semantic'"),  # rounds to 0 images
        ("onelabel", 2, NYU, "'normal'"),  # 3 tasks, 2 images
    ],
)
def test_setting_leaving_a_task_unlabelled_raises(text, n, tasks, task):
    with pytest.raises(ValueError, match="no labelled example") as error:
        label_masks(text, n, tasks, seed=0)
    assert text in str(error.value) and task in str(error.value)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_examples"):
        label_masks("full", 0, NYU, seed=0)
    with pytest.raises(ValueError, match="distinct task names"):
        label_masks("full", 3, ("depth", "depth"), seed=0)
    with pytest.raises(ValueError, match="distinct task names"):
        label_masks("full", 3, (), seed=0)


# ---------- validate_masks ----------
def test_validate_masks():
    settings.validate_masks(np.eye(3, dtype=np.uint8), NYU, "ok")
    with pytest.raises(ValueError, match=r"my\.npy.*'depth'"):
        settings.validate_masks(np.array([[1, 0, 1], [1, 0, 0]], np.uint8), NYU, "my.npy")
    with pytest.raises(ValueError, match=r"src: label masks have shape \(3, 2\)"):
        settings.validate_masks(np.ones((3, 2), np.uint8), NYU, "src")
    with pytest.raises(ValueError, match="only 0 and 1"):
        settings.validate_masks(np.full((3, 3), 2, np.uint8), NYU, "src")


# ---------- the authors' split files ----------
@pytest.mark.parametrize(
    "name,tasks",
    [("nyuv2_onelabel.npy", NYU), ("nyuv2_randomlabels.npy", NYU),
     ("cityscapes_onelabel.npy", CITYSCAPES)],
)
def test_npy_split_files_load_as_is(splits_dir, name, tasks):
    path = splits_dir / name
    masks = masks_from_split_file(path, tasks, num_examples=np.load(path).shape[0])
    assert masks.dtype == np.uint8
    np.testing.assert_array_equal(masks, np.load(path))
    np.testing.assert_array_equal(
        label_masks(f"file={path}", masks.shape[0], tasks, seed=123), np.load(path)
    )


def test_nyu_onelabel_split_is_the_balanced_paper_split(splits_dir):
    masks = masks_from_split_file(splits_dir / "nyuv2_onelabel.npy", NYU)
    np.testing.assert_array_equal(masks.sum(axis=0), [265, 265, 265])


def test_npy_task_count_mismatch_names_file_and_counts(splits_dir):
    path = splits_dir / "nyuv2_onelabel.npy"
    with pytest.raises(ValueError, match=r"nyuv2_onelabel\.npy has 3 task columns but 2 tasks"):
        masks_from_split_file(path, CITYSCAPES)
    with pytest.raises(ValueError, match="795 rows but the dataset has 794"):
        masks_from_split_file(path, NYU, num_examples=794)


@pytest.mark.parametrize(
    "name", ["pascal_context_onelabel.json", "pascal_context_randomlabels.json"]
)
def test_pascal_json_maps_ids_to_rows(splits_dir, name):
    path = splits_dir / name
    image_ids, data = pascal_image_ids(path)
    # A shuffled order: rows must follow image_ids, not the file.
    image_ids = list(np.random.default_rng(0).permutation(image_ids))
    masks = masks_from_split_file(path, PASCAL, num_examples=len(image_ids), image_ids=image_ids)
    assert masks.shape == (len(image_ids), 5) and masks.dtype == np.uint8
    for column, task in enumerate(PASCAL):
        ids = data[PASCAL_KEYS[task]]
        assert masks[:, column].sum() == len(ids)
        want = np.zeros(len(image_ids), np.uint8)
        want[[image_ids.index(i) for i in ids]] = 1
        np.testing.assert_array_equal(masks[:, column], want)
    via_setting = label_masks(f"file={path}", len(image_ids), PASCAL, seed=0, image_ids=image_ids)
    np.testing.assert_array_equal(via_setting, masks)


def test_pascal_onelabel_json_has_one_task_per_image(splits_dir):
    path = splits_dir / "pascal_context_onelabel.json"
    image_ids, _ = pascal_image_ids(path)
    masks = masks_from_split_file(path, PASCAL, image_ids=image_ids)
    assert masks.shape == (4998, 5)
    np.testing.assert_array_equal(masks.sum(axis=1), 1)


def test_pascal_json_errors(splits_dir, tmp_path):
    path = splits_dir / "pascal_context_onelabel.json"
    image_ids, data = pascal_image_ids(path)
    with pytest.raises(ValueError, match="pass the dataset's image_ids"):
        masks_from_split_file(path, PASCAL)
    missing = data["sal"][0]
    with pytest.raises(ValueError, match=rf"'saliency'.*not in the dataset.*{missing}"):
        masks_from_split_file(path, PASCAL, image_ids=[i for i in image_ids if i != missing])
    with pytest.raises(ValueError, match="no list for task 'depth'"):
        masks_from_split_file(path, ("semantic", "depth"), image_ids=image_ids)
    with pytest.raises(ValueError, match="duplicates"):
        masks_from_split_file(path, PASCAL, image_ids=image_ids + image_ids[:1])
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"semseg": ["a"], "normals": []}))
    with pytest.raises(ValueError, match=r"small\.json.*'normal' has no labelled example"):
        masks_from_split_file(small, ("semantic", "normal"), image_ids=["a", "b"])


def test_split_file_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        masks_from_split_file(tmp_path / "nope.npy", NYU)
    other = tmp_path / "split.txt"
    other.write_text("1 0")
    with pytest.raises(ValueError, match=r"split\.txt: expected a \.npy or \.json"):
        masks_from_split_file(other, NYU)
