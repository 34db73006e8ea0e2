"""Checks and readers for the mtan `.npy` release layout (NYU-v2 and Cityscapes).

Both releases of github.com/lorenmt/mtan share one layout: a root with `train/` and
`val/`, each holding one folder per modality (`image/`, `label/`, ...) of files
`{i}.npy`, i = 0..N-1, where N is the number of `.npy` files in `image/` (that is how
the authors' loaders count examples). This module validates such a folder and reports
every problem as one line naming the file, what was expected and what was found.

It also holds `ManualDirError`, `format_problems` and the `ManualRelease` builder mixin,
which the PASCAL-Context builder uses too, so every builder refuses a bad folder with the
same kind of message, and `MtanRelease`, the split generation of both mtan builders.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Mapping, Sequence

import numpy as np

# How many problem lines an error message shows before summarising the rest.
MAX_SHOWN_PROBLEMS = 50
# Beyond this many missing files in one folder, they are reported as one line.
MAX_LISTED_FILES = 5


class ManualDirError(ValueError):
    """The manual data folder is missing files or holds malformed files."""


def format_problems(dataset: str, path: str, problems: Sequence[str]) -> str:
    """One message listing `problems` (at most MAX_SHOWN_PROBLEMS lines, then a count)."""
    shown = [f"  - {p}" for p in problems[:MAX_SHOWN_PROBLEMS]]
    if len(problems) > MAX_SHOWN_PROBLEMS:
        shown.append(f"  ... and {len(problems) - MAX_SHOWN_PROBLEMS} more problems")
    return (
        f"{dataset}: the manual data folder {path} is not a valid release "
        f"({len(problems)} problem(s)):\n" + "\n".join(shown)
    )


def raise_if_problems(dataset: str, path: str, problems: Sequence[str]) -> None:
    """Raises ManualDirError with `format_problems(...)` when `problems` is not empty."""
    if problems:
        raise ManualDirError(format_problems(dataset, path, problems))


class ManualRelease:
    """Split generation of a TFDS builder reading a manually downloaded release (a mixin,
    listed before `tfds.core.GeneratorBasedBuilder`; used by every real dataset).

    The whole folder is validated first (`_problems`, ManualDirError naming every problem);
    then split `s` yields the examples of `SPLIT_SOURCES[s]` (`_generate_examples(root,
    source)`: a release folder, or PASCAL's split file). A subclass sets `SPLIT_COUNTS`
    (release folder or split file -> required count), which a subclass may change (tests do).
    """

    # TFDS split -> where its examples are in the release; the authors test on `val`.
    SPLIT_SOURCES: Mapping[str, str] = {"train": "train", "test": "val"}

    def _problems(self, root: str) -> list[str]:
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        root = os.fspath(dl_manager.manual_dir)
        raise_if_problems(self.name, root, self._problems(root))
        return {split: self._generate_examples(root, source)
                for split, source in self.SPLIT_SOURCES.items()}


MTAN_CITATION = """\
@inproceedings{liu2019end,
  title={End-to-End Multi-Task Learning with Attention},
  author={Liu, Shikun and Johns, Edward and Davison, Andrew J},
  booktitle={CVPR},
  year={2019}
}
"""


class MtanRelease(ManualRelease):
    """A ManualRelease in the mtan layout: split folder `{root}/{source}/`, example i read by
    `_load_example(split_dir, i)` for i < count_examples(split_dir)."""

    def _mtan_info(self, description: str, features: dict, citation: str):
        """The DatasetInfo: `features` then `index` (the row of the authors' split files)."""
        import tensorflow_datasets as tfds

        index = tfds.features.Scalar(
            dtype=np.int64, doc="i of the release file {i}.npy: the row of the authors' split files.")
        return self.dataset_info_from_configs(
            description=description,
            features=tfds.features.FeaturesDict({**features, "index": index}),
            homepage="https://github.com/lorenmt/mtan", citation=citation)

    def _load_example(self, split_dir: str, i: int) -> dict:
        raise NotImplementedError

    def _generate_examples(self, root, folder):
        split_dir = os.path.join(root, folder)
        for i in range(count_examples(split_dir)):
            yield i, self._load_example(split_dir, i)


@dataclasses.dataclass(frozen=True)
class ArrayRule:
    """What one modality's `.npy` files must hold.

    Attributes:
      folder: the modality's folder name inside a split folder, e.g. "label_7".
      channels: None for an [H, W] array, k for an [H, W, k] array.
      check_values: returns a description of the first bad value, or None if all fine.
      what: the expected contents in words, used in messages.
      integral: the values must be whole numbers (class labels); any numeric dtype.
    """

    folder: str
    channels: int | None
    check_values: Callable[[np.ndarray], str | None]
    what: str
    integral: bool = False


def in_range(low: float, high: float) -> Callable[[np.ndarray], str | None]:
    """A value check: all values finite and within [low, high]."""

    def check(array: np.ndarray) -> str | None:
        if not np.all(np.isfinite(array)):
            return "non-finite values (NaN or inf)"
        lo, hi = float(array.min()), float(array.max())
        if lo < low or hi > high:
            return f"values in [{lo:g}, {hi:g}]"
        return None

    return check


def class_labels(num_classes: int, ignore: int = -1) -> Callable[[np.ndarray], str | None]:
    """A value check: whole numbers in {ignore} or [0, num_classes - 1]."""

    def check(array: np.ndarray) -> str | None:
        if not np.all(np.isfinite(array)):
            return "non-finite values (NaN or inf)"
        if not np.all(array == np.round(array)):
            return "non-integer values"
        bad = np.unique(array[(array != ignore) & ((array < 0) | (array >= num_classes))])
        if bad.size:
            shown = bad[:10].astype(np.int64).tolist()
            return f"label values {shown} outside [0, {num_classes - 1}]"
        return None

    return check


def npy_names(folder: str) -> set[str]:
    """Names of the `.npy` files in `folder` (empty if it does not exist)."""
    if not os.path.isdir(folder):
        return set()
    return {n for n in os.listdir(folder) if n.endswith(".npy")}


def count_examples(split_dir: str) -> int:
    """N for a split folder: the number of `.npy` files in its `image/` folder."""
    return len(npy_names(os.path.join(split_dir, "image")))


def expected_shape(rule: ArrayRule, height: int, width: int) -> tuple[int, ...]:
    """The array shape `rule` demands at image size (height, width)."""
    return (height, width) if rule.channels is None else (height, width, rule.channels)


def check_array(path: str, rule: ArrayRule, height: int, width: int) -> str | None:
    """Loads one `.npy` file and returns a problem line, or None if it obeys `rule`."""
    want = expected_shape(rule, height, width)
    expectation = f"expected {rule.what}, shape {want}"
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as err:  # any unreadable file is a problem to report, not a crash
        return f"{path}: cannot be read as .npy ({err}); {expectation}"
    if array.shape != want:
        return f"{path}: {expectation}; got shape {array.shape}"
    kinds = "iuf" if rule.integral else "f"
    if array.dtype.kind not in kinds:
        wanted = "a numeric" if rule.integral else "a floating-point"
        return f"{path}: {expectation} with {wanted} dtype; got dtype {array.dtype}"
    bad = rule.check_values(array)
    if bad is not None:
        return f"{path}: {expectation}; got {bad}"
    return None


def check_split_files(
    split_dir: str, rules: Sequence[ArrayRule], expected_count: int | None
) -> tuple[list[str], int]:
    """Checks that every modality has exactly the files `0.npy .. N-1.npy`.

    Returns:
      (problems, N) where N is the number of `.npy` files in `image/`.
    """
    problems = []
    n = count_examples(split_dir)
    if expected_count is not None and n != expected_count:
        problems.append(
            f"{os.path.join(split_dir, 'image')}: expected {expected_count} files "
            f"0.npy..{expected_count - 1}.npy; got {n} .npy files"
        )
    want = {f"{i}.npy" for i in range(expected_count if expected_count is not None else n)}
    for rule in rules:
        folder = os.path.join(split_dir, rule.folder)
        if not os.path.isdir(folder):
            problems.append(f"{folder}: missing folder (expected {rule.what} as {{i}}.npy)")
            continue
        names = npy_names(folder)
        if not names:
            problems.append(f"{folder}: no .npy files (expected {rule.what} as {{i}}.npy)")
            continue
        missing = sorted(want - names, key=_numeric_key)
        if len(missing) > MAX_LISTED_FILES:
            listed = ", ".join(missing[: MAX_LISTED_FILES - 1]) + f", ..., {missing[-1]}"
            problems.append(f"{folder}: missing {len(missing)} files ({rule.what}): {listed}")
        else:
            problems += [f"{os.path.join(folder, m)}: missing file ({rule.what})" for m in missing]
        extra = sorted(names - want, key=_numeric_key)
        problems += [
            f"{os.path.join(folder, e)}: unexpected file (expected only 0.npy..{len(want) - 1}.npy)"
            for e in extra
        ]
    return problems, n


def _numeric_key(name: str) -> tuple[int, str]:
    stem = name[: -len(".npy")]
    return (int(stem), name) if stem.isdigit() else (-1, name)


def validate_release(
    root: str,
    rules: Sequence[ArrayRule],
    split_counts: Mapping[str, int | None],
    image_size: tuple[int, int] | None,
) -> list[str]:
    """Validates an mtan-layout release folder.

    Args:
      root: the folder holding the split folders.
      rules: one per modality; the first must be the image rule (folder "image").
      split_counts: split folder name -> required number of examples (None: any N > 0).
      image_size: (H, W) every array must have; None: that of `train/image/0.npy`,
        and all files must agree with it.

    Returns:
      Problem lines (empty when the folder is a valid release).
    """
    if not os.path.isdir(root):
        return [f"{root}: missing folder (expected split folders {sorted(split_counts)})"]
    problems = []
    size = image_size
    for split, count in split_counts.items():
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            folders = ", ".join(f"{r.folder}/" for r in rules)
            problems.append(f"{split_dir}: missing folder (expected {folders} of .npy files)")
            continue
        file_problems, n = check_split_files(split_dir, rules, count)
        problems += file_problems
        if size is None:
            size, size_problem = _infer_size(split_dir, rules[0])
            if size_problem:
                problems.append(size_problem)
                continue
        for i in range(n):
            for rule in rules:
                path = os.path.join(split_dir, rule.folder, f"{i}.npy")
                if os.path.isfile(path):
                    problem = check_array(path, rule, *size)
                    if problem:
                        problems.append(problem)
    return problems


def _infer_size(split_dir: str, image_rule: ArrayRule) -> tuple[tuple[int, int] | None, str | None]:
    """(H, W) of `{split_dir}/image/0.npy`, or a problem line if it has no usable shape."""
    path = os.path.join(split_dir, image_rule.folder, "0.npy")
    try:
        shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
    except Exception as err:  # reported, not raised: the caller collects problems
        return None, f"{path}: cannot be read as .npy ({err}); expected {image_rule.what}"
    if len(shape) != 3 or shape[2] != image_rule.channels:
        return None, f"{path}: expected {image_rule.what}, shape (H, W, 3); got shape {shape}"
    return (int(shape[0]), int(shape[1])), None


def load_float32(path: str) -> np.ndarray:
    """A `.npy` array as float32 (the authors' loaders cast with `.type(FloatTensor)`)."""
    return np.load(path, allow_pickle=False).astype(np.float32)


def load_labels(path: str) -> np.ndarray:
    """A `.npy` label map as int32 (whole-number floats, -1 = ignore)."""
    return np.load(path, allow_pickle=False).astype(np.int32)


def load_example(split_dir: str, i: int, folders: Mapping[str, str],
                 label_feature: str = "semantic") -> dict[str, np.ndarray | int]:
    """Example i of a release split folder, typed as the TFDS features: feature -> the array
    of `{folder}/{i}.npy` (`label_feature` as int32 labels, the others float32), and `index`."""
    example: dict[str, np.ndarray | int] = {}
    for feature, folder in folders.items():
        load = load_labels if feature == label_feature else load_float32
        example[feature] = load(os.path.join(split_dir, folder, f"{i}.npy"))
    example["index"] = i
    return example
