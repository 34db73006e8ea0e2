"""Writes tiny fake copies of the real dataset releases, for the builder tests.

Each writer creates the exact folder layout a builder expects under `root`, with random
contents that include the invalid markers (-1 labels, 0 depth, all-zero normals), and
returns what it wrote so tests can check values round-trip.
"""
from __future__ import annotations

import os

import numpy as np
import scipy.io
from PIL import Image


def _save(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, array)


def _labels(rng, size, num_classes) -> np.ndarray:
    """float64 [H, W] whole numbers in -1..num_classes-1, at least one -1 (ignore)."""
    labels = rng.integers(-1, num_classes, size).astype(np.float64)
    labels[0, 0] = -1
    return labels


def _depth(rng, size, scale) -> np.ndarray:
    """float32 [H, W, 1] >= 0, with a few invalid (0) pixels."""
    depth = (rng.random(size + (1,)) * scale + 0.01).astype(np.float32)
    depth[0, :2] = 0.0
    return depth


def _normals(rng, size) -> np.ndarray:
    """float32 [H, W, 3] unit vectors, with a few invalid (all-zero) pixels."""
    n = rng.normal(size=size + (3,))
    n = (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)
    n = np.clip(n, -1.0, 1.0)
    n[1, :3] = 0.0
    return n


def _write_mtan(root, counts, seed, make_arrays) -> dict[str, list[dict]]:
    """The mtan layout: `{root}/{split}/{folder}/{i}.npy` for the arrays `make_arrays(rng)`
    draws per example; returns {split folder: [{folder: array}]}."""
    counts = counts or {"train": 4, "val": 3}
    rng = np.random.default_rng(seed)
    written = {}
    for split, n in counts.items():
        written[split] = []
        for i in range(n):
            arrays = make_arrays(rng)
            for folder, array in arrays.items():
                _save(os.path.join(root, split, folder, f"{i}.npy"), array)
            written[split].append(arrays)
    return written


def write_nyuv2(root, counts=None, size=(8, 12), seed=0) -> dict[str, list[dict]]:
    """The mtan NYU-v2 layout; returns {split folder: [{image, label, depth, normal}]}."""
    return _write_mtan(root, counts, seed, lambda rng: {
        "image": rng.random(size + (3,)).astype(np.float32),
        "label": _labels(rng, size, 13),
        "depth": _depth(rng, size, 10.0),
        "normal": _normals(rng, size),
    })


def write_cityscapes(root, counts=None, size=(8, 16), seed=0) -> dict[str, list[dict]]:
    """The mtan Cityscapes layout with label_7 and label_19; returns what was written."""
    return _write_mtan(root, counts, seed, lambda rng: {
        "image": rng.random(size + (3,)).astype(np.float32),
        "label_7": _labels(rng, size, 7),
        "label_19": _labels(rng, size, 19),
        "depth": _depth(rng, size, 0.5),
    })


def write_parts_mat(path: str, objects) -> None:
    """A Pascal-Part `.mat`: struct `anno` (imname, objects(class, class_ind, mask, parts)).

    Args:
      objects: [(class_ind, mask uint8 [H, W], [(part name, mask uint8 [H, W]), ...])].
    """
    part_dtype = [("part_name", "O"), ("mask", "O")]
    obj_dtype = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
    objs = np.zeros((1, len(objects)), dtype=obj_dtype)
    for k, (class_ind, mask, parts) in enumerate(objects):
        if parts:
            part_array = np.zeros((1, len(parts)), dtype=part_dtype)
            for j, (name, part_mask) in enumerate(parts):
                part_array[0, j] = (name, part_mask.astype(np.uint8))
        else:
            part_array = np.zeros((0, 0))
        objs[0, k] = (f"class{class_ind}", np.array([[class_ind]]), mask.astype(np.uint8),
                      part_array)
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = (os.path.basename(path), objs)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    scipy.io.savemat(path, {"anno": anno})


def _save_png(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _pascal_image(rng, root, image_id, size, with_person, semseg_folder) -> dict:
    h, w = size
    image = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    os.makedirs(os.path.join(root, "JPEGImages"), exist_ok=True)
    Image.fromarray(image).save(os.path.join(root, "JPEGImages", f"{image_id}.jpg"), quality=90)
    semseg = rng.integers(0, 21, (h, w)).astype(np.uint8)
    semseg[0, 0] = 255
    _save_png(os.path.join(root, "semseg", semseg_folder, f"{image_id}.png"), semseg)
    # Blocky context labels: one class valid for normals (4 = ceiling), one not (1).
    label_map = np.where(np.arange(w)[None, :] < w // 2, 4, 1) * np.ones((h, 1), int)
    label_map[h // 2:, : w // 3] = 331  # person: valid for normals
    label_map = label_map.astype(np.uint16)
    scipy.io.savemat(_mkdir(os.path.join(root, "pascal-context", "trainval", f"{image_id}.mat")),
                     {"LabelMap": label_map})
    normals_png = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    _save_png(os.path.join(root, "normals_distill", f"{image_id}.png"), normals_png)
    sal_png = rng.integers(0, 256, (h, w)).astype(np.uint8)
    sal_png[0, :2] = (127, 128)  # either side of the 0.5 threshold
    _save_png(os.path.join(root, "sal_distill", f"{image_id}.png"), sal_png)
    person = np.zeros((h, w), np.uint8)
    objects = [(12, np.ones((h, w), np.uint8), [("head", np.ones((h, w), np.uint8))])]  # a dog
    if with_person:
        person[1:, 1:] = 1
        head, torso, foot = np.zeros((3, h, w), np.uint8)
        head[1:3, 1:] = 1
        torso[2:, 1:] = 1  # overlaps the head: later parts overwrite earlier ones
        foot[-1, -2:] = 1
        objects.append((15, person, [("head", head), ("torso", torso), ("rfoot", foot)]))
    write_parts_mat(os.path.join(root, "human_parts", f"{image_id}.mat"), objects)
    return {"label_map": label_map, "semseg": semseg, "normals_png": normals_png,
            "sal_png": sal_png, "with_person": with_person, "size": size}


def _mkdir(path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def write_pascal_context(root, splits=None, seed=0) -> dict[str, dict]:
    """The PASCAL_MT layout; returns {image id: what was written for it}.

    Args:
      splits: split file name -> image ids; default 3 train and 2 val ids. Images have
        different sizes; every other image shows a person; the last id of each split has
        its semseg under semseg/VOC12/ (the reference looks there first).
    """
    splits = splits or {"train": ["2008_000001", "2008_000002", "2008_000003"],
                        "val": ["2009_000001", "2009_000002"]}
    rng = np.random.default_rng(seed)
    written = {}
    k = 0
    for split, ids in splits.items():
        os.makedirs(os.path.join(root, "ImageSets", "Context"), exist_ok=True)
        with open(os.path.join(root, "ImageSets", "Context", f"{split}.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
        for j, image_id in enumerate(ids):
            folder = "VOC12" if j == len(ids) - 1 else "pascal-context"
            size = (8 + 2 * (k % 3), 10 + k % 4)
            written[image_id] = _pascal_image(rng, root, image_id, size, k % 2 == 0, folder)
            k += 1
    return written
