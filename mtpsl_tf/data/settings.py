"""Partial-label settings: which tasks of which training image are labelled.

A setting is named by a short string (`parse_setting`) and turned into a per-example label
mask, a uint8 array `[N, T]` (row n = dataset index n, column t = task t of the dataset's task
list, 1 = labelled). Masks are either generated from a seed (`label_masks`) or read from the
authors' released split files (`masks_from_split_file`).

Accepted setting strings:
  full                every task of every image is labelled
  onelabel            each image keeps exactly one task, tasks balanced (NYU 795 -> 265 x 3)
  randomlabels        each image keeps a uniformly random number 1..T-1 of random tasks
  ratio=A:B[:C...]    exactly one task per image, task counts proportional to A:B:...
  ssl=F               a fraction F of the images fully labelled, the rest unlabelled
                      (F a decimal in [0, 1] or a fraction such as 1/3)
  file=PATH           the authors' split file (.npy for NYU-v2 / Cityscapes, .json for PASCAL)
"""

from __future__ import annotations

import dataclasses
import fractions
import json
import pathlib
import re
import types
from collections.abc import Mapping, Sequence

import numpy as np

ACCEPTED_FORMS = (
    "full",
    "onelabel",
    "randomlabels",
    "ratio=A:B[:C...] (non-negative numbers, one per task)",
    "ssl=F (0 <= F <= 1, e.g. ssl=0.3333 or ssl=1/3)",
    "file=PATH (a .npy or .json split file)",
)

KINDS = ("full", "onelabel", "randomlabels", "ratio", "ssl", "file")

# Keys of the authors' PASCAL-Context json splits -> our task names.
PASCAL_SPLIT_KEYS = types.MappingProxyType(
    {
        "semseg": "semantic",
        "human_parts": "human_parts",
        "normals": "normal",
        "sal": "saliency",
        "edge": "edge",
    }
)

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_RATIO_RE = re.compile(rf"{_NUMBER}(?::{_NUMBER})*")
_FRACTION_RE = re.compile(rf"{_NUMBER}(?:/{_NUMBER})?")


@dataclasses.dataclass(frozen=True)
class Setting:
    """A parsed partial-label setting.

    Attributes:
      kind: one of `KINDS`.
      ratio: for `ratio`, one non-negative weight per task (positional, the dataset's task order).
      fraction: for `ssl`, the fraction of fully labelled images in [0, 1].
      path: for `file`, the split file's path.
    """

    kind: str
    ratio: tuple[float, ...] = ()
    fraction: float | None = None
    path: str | None = None

    def __post_init__(self):
        where = f"Setting {self.kind!r}"
        if self.kind not in KINDS:
            raise ValueError(f"unknown setting kind {self.kind!r}; expected one of {KINDS}")
        if (self.kind == "ratio") != bool(self.ratio):
            raise ValueError(f"{where}: `ratio` must be given exactly for kind 'ratio'")
        if self.kind == "ratio" and (
            any(not np.isfinite(r) or r < 0 for r in self.ratio) or sum(self.ratio) <= 0
        ):
            raise ValueError(f"ratio {self.ratio} must be finite, non-negative, positive sum")
        if (self.kind == "ssl") != (self.fraction is not None):
            raise ValueError(f"{where}: `fraction` must be given exactly for kind 'ssl'")
        if self.kind == "ssl" and not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"ssl fraction {self.fraction} must be in [0, 1]")
        if (self.kind == "file") != bool(self.path):
            raise ValueError(f"{where}: `path` must be given exactly for kind 'file'")

    def __str__(self) -> str:
        """The setting string; `parse_setting(str(s)) == s`."""
        if self.kind == "ratio":
            return "ratio=" + ":".join(_format_number(r) for r in self.ratio)
        if self.kind == "ssl":
            return f"ssl={_format_number(self.fraction)}"
        if self.kind == "file":
            return f"file={self.path}"
        return self.kind


def _format_number(value: float) -> str:
    """Shortest positional decimal that parses back to `value` ('1', '0.3333', '0.00001')."""
    return np.format_float_positional(value, trim="-")


def _malformed(text: str, why: str) -> ValueError:
    forms = "; ".join(ACCEPTED_FORMS)
    return ValueError(f"malformed label setting {text!r}: {why}. Accepted forms: {forms}")


def _parse_fraction(text: str, value: str) -> float:
    if not _FRACTION_RE.fullmatch(value):
        raise _malformed(text, f"{value!r} is not a number or a fraction a/b")
    numerator, _, denominator = value.partition("/")
    if denominator and float(denominator) == 0:
        raise _malformed(text, "division by zero")
    fraction = float(numerator) / float(denominator) if denominator else float(numerator)
    if not 0.0 <= fraction <= 1.0:
        raise _malformed(text, f"the ssl fraction {fraction} is outside [0, 1]")
    return fraction


def _parse_ratio(text: str, value: str) -> tuple[float, ...]:
    if not _RATIO_RE.fullmatch(value):
        raise _malformed(text, f"{value!r} is not non-negative numbers separated by ':'")
    ratio = tuple(float(part) for part in value.split(":"))
    if sum(ratio) <= 0:
        raise _malformed(text, "the ratio parts sum to zero")
    return ratio


def parse_setting(text: str) -> Setting:
    """Parses a setting string (see the module docstring) into a `Setting`.

    Raises:
      ValueError: naming `text` and listing the accepted forms, for anything else.
    """
    if not isinstance(text, str):
        raise _malformed(repr(text), f"expected a string, got {type(text).__name__}")
    stripped = text.strip()
    if stripped in ("full", "onelabel", "randomlabels"):
        return Setting(kind=stripped)
    key, sep, value = stripped.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or key not in ("ratio", "ssl", "file"):
        raise _malformed(text, "unknown setting")
    if key == "ratio":
        return Setting(kind="ratio", ratio=_parse_ratio(text, value))
    if key == "ssl":
        return Setting(kind="ssl", fraction=_parse_fraction(text, value))
    if not value:
        raise _malformed(text, "empty file path")
    return Setting(kind="file", path=value)


def _check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    tasks = tuple(tasks)
    if not tasks or any(not isinstance(t, str) for t in tasks) or len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must be a non-empty list of distinct task names, got {tasks!r}")
    return tasks


def _check_num_examples(num_examples) -> int:
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)):
        raise ValueError(f"num_examples must be a positive integer, got {num_examples!r}")
    if num_examples < 1:
        raise ValueError(f"num_examples must be a positive integer, got {num_examples}")
    return int(num_examples)


def _one_task_per_image(counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [sum(counts), T]: a random permutation of the images; counts[t] of them get task t."""
    num_examples = int(counts.sum())
    masks = np.zeros((num_examples, len(counts)), np.uint8)
    order = rng.permutation(num_examples)
    masks[order, np.repeat(np.arange(len(counts)), counts)] = 1
    return masks


def proportional_counts(ratio: Sequence[float], total: int) -> np.ndarray:
    """int64 [len(ratio)]: counts proportional to `ratio` that sum to `total`.

    Largest-remainder rounding with exact rational arithmetic; ties go to the earlier entry.
    A zero weight always gets a zero count.
    """
    weights = [fractions.Fraction(r) for r in ratio]
    quotas = [total * w / sum(weights) for w in weights]
    counts = np.array([q.numerator // q.denominator for q in quotas], np.int64)
    remainders = [q - c for q, c in zip(quotas, counts)]
    # Stable sort on the negated remainder: largest first, ties to the earlier task.
    order = sorted(range(len(ratio)), key=lambda t: -remainders[t])
    counts[order[: total - int(counts.sum())]] += 1
    return counts


def _onelabel(num_examples: int, num_tasks: int, rng: np.random.Generator) -> np.ndarray:
    return _one_task_per_image(proportional_counts([1] * num_tasks, num_examples), rng)


def _ratio(ratio, num_examples: int, tasks: tuple[str, ...], rng) -> np.ndarray:
    if len(ratio) != len(tasks):
        text = ":".join(_format_number(r) for r in ratio)
        raise ValueError(
            f"ratio {text} has {len(ratio)} parts but the dataset has {len(tasks)} tasks "
            f"{list(tasks)}"
        )
    return _one_task_per_image(proportional_counts(ratio, num_examples), rng)


def _randomlabels(num_examples: int, tasks: tuple[str, ...], rng) -> np.ndarray:
    num_tasks = len(tasks)
    if num_tasks < 2:
        raise ValueError(f"randomlabels needs at least 2 tasks (keeps 1..T-1), got {list(tasks)}")
    keep = rng.integers(1, num_tasks, size=num_examples)  # uniform in 1..T-1
    # The rank of each task in a uniformly random per-row permutation: keeping the tasks of
    # rank < keep chooses `keep` tasks uniformly.
    rank = np.argsort(np.argsort(rng.random((num_examples, num_tasks)), axis=1), axis=1)
    return (rank < keep[:, None]).astype(np.uint8)


def _ssl(fraction: float, num_examples: int, num_tasks: int, rng) -> np.ndarray:
    num_full = int(np.floor(fraction * num_examples + 0.5))  # round half up
    masks = np.zeros((num_examples, num_tasks), np.uint8)
    masks[rng.permutation(num_examples)[:num_full]] = 1
    return masks


def label_masks(
    setting: Setting | str,
    num_examples: int,
    tasks: Sequence[str],
    seed: int,
    image_ids: Sequence[str] | None = None,
) -> np.ndarray:
    """Label masks uint8 [num_examples, len(tasks)] for a setting, drawn with `default_rng(seed)`.

    Args:
      setting: a `Setting` or a setting string.
      num_examples: N, the number of training images.
      tasks: the dataset's task names, in the dataset's order (column order of the result).
      seed: seed of `np.random.default_rng` (ignored by `full` and `file=`).
      image_ids: only for `file=` with a .json split: the dataset's ordered image ids.

    Raises:
      ValueError: if the setting cannot apply to these tasks, or leaves a task with no label.
    """
    if isinstance(setting, str):
        setting = parse_setting(setting)
    tasks = _check_tasks(tasks)
    num_examples = _check_num_examples(num_examples)
    rng = np.random.default_rng(seed)
    if setting.kind == "full":
        masks = np.ones((num_examples, len(tasks)), np.uint8)
    elif setting.kind == "onelabel":
        masks = _onelabel(num_examples, len(tasks), rng)
    elif setting.kind == "randomlabels":
        masks = _randomlabels(num_examples, tasks, rng)
    elif setting.kind == "ratio":
        masks = _ratio(setting.ratio, num_examples, tasks, rng)
    elif setting.kind == "ssl":
        masks = _ssl(setting.fraction, num_examples, len(tasks), rng)
    else:
        return masks_from_split_file(setting.path, tasks, num_examples, image_ids)
    validate_masks(masks, tasks, f"setting {str(setting)!r} with {num_examples} examples")
    return masks


def validate_masks(masks: np.ndarray, tasks: Sequence[str], source: str) -> None:
    """Checks label masks [N, T]: 2-D, T == len(tasks), N >= 1, values 0/1, every task labelled.

    Raises:
      ValueError: naming `source` (a file or setting) and the offending task.
    """
    masks = np.asarray(masks)
    tasks = tuple(tasks)
    if masks.ndim != 2 or masks.shape[1] != len(tasks) or masks.shape[0] < 1:
        raise ValueError(
            f"{source}: label masks have shape {masks.shape}, expected [N >= 1, {len(tasks)}] "
            f"for tasks {list(tasks)}"
        )
    if not np.isin(masks, (0, 1)).all():
        raise ValueError(f"{source}: label masks must hold only 0 and 1, got {np.unique(masks)}")
    counts = masks.sum(axis=0)
    for task, count in zip(tasks, counts):
        if count == 0:
            raise ValueError(
                f"{source}: task {task!r} has no labelled example among {masks.shape[0]} images; "
                "every task needs at least one"
            )


def _masks_from_npy(path: pathlib.Path, tasks: tuple[str, ...], num_examples) -> np.ndarray:
    masks = np.load(path, allow_pickle=False)
    if masks.ndim != 2:
        raise ValueError(f"split file {path}: expected a 2-D [N, T] array, got shape {masks.shape}")
    if masks.shape[1] != len(tasks):
        raise ValueError(
            f"split file {path} has {masks.shape[1]} task columns but {len(tasks)} tasks "
            f"{list(tasks)} were given"
        )
    if num_examples is not None and masks.shape[0] != num_examples:
        raise ValueError(
            f"split file {path} has {masks.shape[0]} rows but the dataset has {num_examples} "
            "examples"
        )
    validate_masks(masks, tasks, f"split file {path}")
    return masks.astype(np.uint8)


def _image_index(image_ids: Sequence[str], path: pathlib.Path, num_examples) -> dict[str, int]:
    if image_ids is None:
        raise ValueError(
            f"split file {path} is a .json of image ids: pass the dataset's image_ids"
        )
    index = {image_id: row for row, image_id in enumerate(image_ids)}
    if len(index) != len(image_ids):
        raise ValueError(f"image_ids for {path} contain duplicates")
    if num_examples is not None and len(image_ids) != num_examples:
        raise ValueError(
            f"{len(image_ids)} image_ids given for {path} but num_examples is {num_examples}"
        )
    return index


def _task_lists(data, path: pathlib.Path) -> dict[str, list[str]]:
    """The json's task -> ids lists, under the file's own keys (PASCAL-Context's task names)
    and their NYU-style aliases (semseg -> semantic, ...)."""
    if not isinstance(data, Mapping) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"split file {path}: expected a json object of task -> list of image ids")
    return {**{PASCAL_SPLIT_KEYS.get(key, key): ids for key, ids in data.items()}, **data}


def _masks_from_json(path, tasks, num_examples, image_ids) -> np.ndarray:
    index = _image_index(image_ids, path, num_examples)
    with open(path, encoding="utf-8") as f:
        lists = _task_lists(json.load(f), path)
    masks = np.zeros((len(index), len(tasks)), np.uint8)
    for column, task in enumerate(tasks):
        if task not in lists:
            raise ValueError(
                f"split file {path} has no list for task {task!r}; it has {sorted(lists)}"
            )
        missing = [i for i in lists[task] if i not in index]
        if missing:
            raise ValueError(
                f"split file {path}, task {task!r}: {len(missing)} image ids are not in the "
                f"dataset's image_ids, e.g. {missing[:5]}"
            )
        masks[[index[i] for i in lists[task]], column] = 1
    validate_masks(masks, tasks, f"split file {path}")
    return masks


def masks_from_split_file(
    path: str | pathlib.Path,
    tasks: Sequence[str],
    num_examples: int | None = None,
    image_ids: Sequence[str] | None = None,
) -> np.ndarray:
    """Label masks uint8 [N, len(tasks)] from one of the authors' split files.

    `.npy` (NYU-v2, Cityscapes): a uint8 [N, T] array whose columns are the dataset's task order;
    `tasks` must have T entries. `.json` (PASCAL-Context): task -> list of image ids, with the
    authors' keys (`semseg`, `human_parts`, `normals`, `sal`, `edge`) or our task names; row i
    of the result is `image_ids[i]`. Json lists of tasks not in `tasks` are ignored.

    Raises:
      FileNotFoundError: if `path` does not exist.
      ValueError: naming the file, for a task-count or row-count mismatch, a missing task list,
        ids absent from `image_ids`, or a task left with no label.
    """
    path = pathlib.Path(path)
    tasks = _check_tasks(tasks)
    if num_examples is not None:
        num_examples = _check_num_examples(num_examples)
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} not found")
    if path.suffix == ".npy":
        return _masks_from_npy(path, tasks, num_examples)
    if path.suffix == ".json":
        return _masks_from_json(path, tasks, num_examples, image_ids)
    raise ValueError(f"split file {path}: expected a .npy or .json file")
