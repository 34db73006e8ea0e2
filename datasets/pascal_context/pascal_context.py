"""`mtpsl_pascal_context`: PASCAL-Context in the PASCAL_MT layout, 5 dense tasks.

The layout and decoding follow `data/pascal_context.py` of
github.com/SimonVandenhende/Multi-Task-Learning-PyTorch (see `decode.py`). Nothing is
downloaded: see `MANUAL_DOWNLOAD_INSTRUCTIONS`.
"""
from __future__ import annotations

import collections
import os
from typing import Callable

import numpy as np
import tensorflow_datasets as tfds

from mtpsl_datasets.nyuv2 import mtan_layout
from mtpsl_datasets.pascal_context import decode

# split name in TFDS -> split file ImageSets/Context/{name}.txt; the reference tests on val.
SPLIT_FILES = {"train": "train", "test": "val"}
# Number of image ids in each split file of the release.
RELEASE_COUNTS = {"train": 4998, "val": 5105}
# The authors' split JSON keys, which are also the label feature names here.
TASKS = ("semseg", "human_parts", "normals", "sal", "edge")

_MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download PASCAL_MT.tgz, the multi-task PASCAL-Context release used by
Multi-Task-Learning-PyTorch (Vandenhende et al., TPAMI 2021; linked from
https://github.com/SimonVandenhende/Multi-Task-Learning-PyTorch, data/pascal_context.py),
unpack it and pass the folder `PASCAL_MT/` as the manual dir:

  <manual_dir>/
    ImageSets/Context/train.txt        4998 image ids, one per line (e.g. 2008_000002)
    ImageSets/Context/val.txt          5105 image ids (the test split)
    JPEGImages/{id}.jpg                RGB image, H x W varies per image
    semseg/VOC12/{id}.png              21-class labels 0..20, 255 = ignore (used if present)
    semseg/pascal-context/{id}.png     otherwise this one; same contents
    human_parts/{id}.mat               Pascal-Part annotation (struct `anno`)
    normals_distill/{id}.png           RGB-encoded normals, uint8 [H, W, 3]
    sal_distill/{id}.png               saliency, uint8 [H, W]
    pascal-context/trainval/{id}.mat   context labels (`LabelMap`, [H, W]) for edges and
                                       the normals mask

Every label file of an image must have that image's H x W. Reading the .mat files needs
scipy. The feature `image_id` holds the id, which the authors' split JSON files list.
"""


def _path(root: str, image_id: str) -> dict[str, str]:
    """The files of one image id (semseg: the VOC12 file if present, as the reference)."""
    voc = os.path.join(root, "semseg", "VOC12", f"{image_id}.png")
    context = os.path.join(root, "semseg", "pascal-context", f"{image_id}.png")
    return {
        "image": os.path.join(root, "JPEGImages", f"{image_id}.jpg"),
        "semseg": voc if os.path.isfile(voc) else context,
        "human_parts": os.path.join(root, "human_parts", f"{image_id}.mat"),
        "normals": os.path.join(root, "normals_distill", f"{image_id}.png"),
        "sal": os.path.join(root, "sal_distill", f"{image_id}.png"),
        "context": os.path.join(root, "pascal-context", "trainval", f"{image_id}.mat"),
    }


def _loadmat(path: str) -> dict:
    import scipy.io  # deferred: only PASCAL-Context needs scipy

    return scipy.io.loadmat(path)


def read_split(root: str, split_file: str) -> list[str]:
    """The image ids of `ImageSets/Context/{split_file}.txt`, in file order."""
    with open(os.path.join(root, "ImageSets", "Context", f"{split_file}.txt")) as f:
        return [line.strip() for line in f.read().splitlines() if line.strip()]


def load_example(root: str, image_id: str, index: int) -> dict:
    """All features of one image id, decoded as the reference does (see `decode.py`)."""
    paths = _path(root, image_id)
    image = decode.read_image(paths["image"])
    label_map = _loadmat(paths["context"])["LabelMap"]
    objects = decode.part_objects(_loadmat(paths["human_parts"]))
    return {
        "image": image,
        "semseg": decode.semseg_from_png(decode.read_png(paths["semseg"])),
        "human_parts": decode.human_parts_from_objects(objects, image.shape[:2]),
        "has_human_parts": decode.has_human_parts(objects),
        "normals": decode.normals_from_png(decode.read_png(paths["normals"]), label_map),
        "sal": decode.saliency_from_png(decode.read_png(paths["sal"])),
        "edge": decode.edges_from_label_map(label_map),
        "image_id": image_id,
        "index": index,
    }


# ---------------------------------------------------------------- validation


def _read_or_problem(path: str, reader: Callable, expectation: str):
    """(value, None) or (None, problem line) when `path` is missing or unreadable."""
    if not os.path.isfile(path):
        return None, f"{path}: missing file ({expectation})"
    try:
        return reader(path), None
    except Exception as err:  # reported, not raised: validation collects every problem
        return None, f"{path}: cannot be read ({err}); expected {expectation}"


def _shape_problem(path: str, got: tuple, want: tuple, what: str) -> str | None:
    if tuple(got) != tuple(want):
        return (f"{path}: expected {what} of shape {tuple(want)} (the image's); "
                f"got shape {tuple(got)}")
    return None


def _check_semseg(path: str, png: np.ndarray, hw: tuple) -> str | None:
    bad_shape = _shape_problem(path, png.shape, hw, "semantic labels")
    if bad_shape:
        return bad_shape
    values = np.unique(png)
    bad = values[(values >= decode.NUM_SEMSEG_CLASSES) & (values != decode.IGNORE)]
    if bad.size:
        return (f"{path}: expected semantic labels in [0, {decode.NUM_SEMSEG_CLASSES - 1}] "
                f"or {decode.IGNORE}; got values {bad[:10].tolist()}")
    return None


def _check_parts(path: str, mat: dict, hw: tuple) -> str | None:
    try:
        objects = decode.part_objects(mat)
        for obj in objects:
            bad_shape = _shape_problem(path, np.shape(obj[2]), hw, "object masks")
            if bad_shape:
                return bad_shape
            for part in (obj[3][0] if obj[3].size else []):
                bad_shape = _shape_problem(path, np.shape(part[1]), hw, "part masks")
                if bad_shape:
                    return bad_shape
        decode.human_parts_from_objects(objects, hw)
    except (KeyError, IndexError, TypeError, ValueError) as err:
        return f"{path}: expected a Pascal-Part annotation (struct anno.objects.parts); got {err!r}"
    return None


def _check_context(path: str, mat: dict, hw: tuple) -> str | None:
    if "LabelMap" not in mat:
        return f"{path}: expected a variable LabelMap; got variables {sorted(mat)}"
    label_map = np.asarray(mat["LabelMap"])
    bad_shape = _shape_problem(path, label_map.shape, hw, "LabelMap")
    if bad_shape:
        return bad_shape
    # MATLAB may store the ids as doubles; any numeric type holding whole numbers will do.
    if label_map.dtype.kind not in "iuf" or not np.all(label_map == np.round(label_map)):
        return (f"{path}: expected LabelMap of whole-number class ids; got dtype "
                f"{label_map.dtype} with values such as {label_map.ravel()[:3].tolist()}")
    return None


def check_example(root: str, image_id: str) -> list[str]:
    """Problems with the files of one image id; empty when all are present and well-formed."""
    paths = _path(root, image_id)
    if not os.path.isfile(paths["semseg"]):
        paths["semseg"] = os.path.join(root, "semseg", "{VOC12,pascal-context}", f"{image_id}.png")
    image, problem = _read_or_problem(paths["image"], decode.read_image, "a JPEG image")
    if problem:
        return [problem]
    hw = image.shape[:2]
    problems = []
    checks = [
        ("semseg", decode.read_png, "a PNG of semantic labels 0..20 or 255", _check_semseg),
        ("human_parts", _loadmat, "a Pascal-Part .mat annotation", _check_parts),
        ("context", _loadmat, "a PASCAL-Context .mat with LabelMap", _check_context),
        ("normals", decode.read_png, "an RGB PNG of normals",
         lambda p, a, s: _shape_problem(p, a.shape, s + (3,), "an RGB normals PNG")),
        ("sal", decode.read_png, "a grey PNG of saliency",
         lambda p, a, s: _shape_problem(p, a.shape, s, "a one-channel saliency PNG")),
    ]
    for key, reader, expectation, check in checks:
        value, problem = _read_or_problem(paths[key], reader, expectation)
        problem = problem or check(paths[key], value, hw)
        if problem:
            problems.append(problem)
    return problems


def validate_manual_dir(path: str, split_counts=None) -> list[str]:
    """Problems with a PASCAL_MT folder; empty when it is valid.

    Args:
      path: the PASCAL_MT folder.
      split_counts: split file name -> required number of ids; default RELEASE_COUNTS
        (4998 / 5105). A value None accepts any non-zero number.

    Returns:
      One line per problem, naming the file, what was expected and what was found.
    """
    root = os.fspath(path)
    counts = RELEASE_COUNTS if split_counts is None else split_counts
    if not os.path.isdir(root):
        return [f"{root}: missing folder (expected the PASCAL_MT release)"]
    problems = []
    for split_file, count in counts.items():
        txt = os.path.join(root, "ImageSets", "Context", f"{split_file}.txt")
        if not os.path.isfile(txt):
            problems.append(f"{txt}: missing file (expected image ids, one per line)")
            continue
        ids = read_split(root, split_file)
        if not ids or (count is not None and len(ids) != count):
            problems.append(f"{txt}: expected {count or 'some'} image ids; got {len(ids)}")
        duplicates = sorted(i for i, n in collections.Counter(ids).items() if n > 1)
        if duplicates:
            problems.append(f"{txt}: expected distinct image ids; got repeats {duplicates[:10]}")
        for image_id in ids:
            problems += check_example(root, image_id)
    return problems


class MtpslPascalContext(mtan_layout.ManualRelease, tfds.core.GeneratorBasedBuilder):
    """PASCAL-Context (PASCAL_MT): semseg, human parts, normals, saliency and edges."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "First release: the PASCAL_MT layout, splits train (4998) and test (5105, "
                 "from val.txt), 5 tasks decoded as Multi-Task-Learning-PyTorch does.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_DOWNLOAD_INSTRUCTIONS
    SPLIT_SOURCES = SPLIT_FILES
    SPLIT_COUNTS = RELEASE_COUNTS  # split file -> required id count

    def _info(self) -> tfds.core.DatasetInfo:
        def label_map(doc, dtype=np.int32):
            return tfds.features.Tensor(shape=(None, None), dtype=dtype,
                                        encoding=tfds.features.Encoding.ZLIB, doc=doc)

        return self.dataset_info_from_configs(
            description=(
                "PASCAL-Context with the five dense tasks of Vandenhende et al. (PASCAL_MT): "
                "21-class semantic segmentation, 6 human parts, distilled surface normals, "
                "distilled saliency and edges; images of varying size."
            ),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(
                    shape=(None, None, 3), encoding_format="png",
                    doc="RGB uint8 [H, W, 3], the JPEG as PIL decodes it (stored lossless)."),
                "semseg": label_map("Semantic labels int32 [H, W]: 0..20, 255 = ignore."),
                "human_parts": label_map(
                    "Human parts int32 [H, W]: 0 background, 1..6 parts; all-zero when the "
                    "image has no person (the reference then ignores it, value 255)."),
                "has_human_parts": tfds.features.Scalar(
                    dtype=np.bool_,
                    doc="Whether a person object of the image has a non-empty mask."),
                "normals": tfds.features.Tensor(
                    shape=(None, None, 3), dtype=np.float32, encoding=tfds.features.Encoding.ZLIB,
                    doc="Distilled normals float32 [H, W, 3] in [-1, 1]; all-zero = invalid."),
                "sal": label_map("Saliency int32 [H, W] in {0, 1}."),
                "edge": label_map("Edges int32 [H, W] in {0, 1}."),
                "image_id": tfds.features.Text(doc="PASCAL image id, e.g. 2008_000002."),
                "index": tfds.features.Scalar(
                    dtype=np.int64, doc="Line of the id in its ImageSets/Context split file."),
            }),
            homepage="https://github.com/SimonVandenhende/Multi-Task-Learning-PyTorch",
            citation=_CITATION,
        )

    def _problems(self, root):
        return validate_manual_dir(root, self.SPLIT_COUNTS)

    def _generate_examples(self, root, split_file):
        for index, image_id in enumerate(read_split(root, split_file)):
            yield image_id, load_example(root, image_id, index)


_CITATION = """\
@article{vandenhende2021multi,
  title={Multi-Task Learning for Dense Prediction Tasks: A Survey},
  author={Vandenhende, Simon and Georgoulis, Stamatios and Van Gansbeke, Wouter and
          Proesmans, Marc and Dai, Dengxin and Van Gool, Luc},
  journal={IEEE TPAMI},
  year={2021}
}
@inproceedings{mottaghi2014role,
  title={The Role of Context for Object Detection and Semantic Segmentation in the Wild},
  author={Mottaghi, Roozbeh and Chen, Xianjie and Liu, Xiaobai and Cho, Nam-Gyu and
          Lee, Seong-Whan and Fidler, Sanja and Urtasun, Raquel and Yuille, Alan},
  booktitle={CVPR},
  year={2014}
}
"""
