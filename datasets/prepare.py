"""Validates a manually downloaded release, then builds its TFDS dataset.

  python datasets/prepare.py --dataset=nyuv2|cityscapes|pascal_context [--config=NAME] \
      --manual_dir=DIR --data_dir=DIR

(--dataset: every registered dataset that is not generated; see mtpsl_tf.data.registry.)

The folder is checked first (every expected file present, shapes, dtypes and value
ranges, consistent counts); any problem is printed, one line per file, and the script
exits with status 1 before writing anything. Otherwise the dataset is written to
`{data_dir}/mtpsl_{dataset}/[{config}/]{version}/`. TFDS writes into a temporary
`*.incomplete*` folder and renames it only at the end, so an interrupted run leaves no
dataset that looks prepared.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

from mtpsl_tf.data.registry import DATASETS as REGISTRY

# Every registered dataset that is downloaded by hand (not generated).
DATASETS = tuple(name for name in REGISTRY if not REGISTRY.get(name).generated)

_DATASET = flags.DEFINE_enum("dataset", None, DATASETS, "Which release to prepare.")
_CONFIG = flags.DEFINE_string(
    "config", None,
    "Builder config (cityscapes: c7_128x256, c19_128x256, c7_256x512, c19_256x512); "
    "default: the builder's default.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder holding the unpacked release.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory to write to.")


def builder_class(dataset: str):
    """The builder class for a dataset name in DATASETS (imports, thus registers, it)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    return REGISTRY.get(dataset).builder_class()


def config_problem(cls, config: str | None) -> str | None:
    """Why `config` is not a config of builder class `cls`, or None if it is (or is None)."""
    names = [c.name for c in cls.BUILDER_CONFIGS]
    if config is None or config in names:
        return None
    if not names:
        return f"{cls.name} has no configs; got --config={config}"
    return f"{cls.name} has no config {config!r}; expected one of {names}"


def manual_dir_problems(builder, manual_dir: str) -> list[str]:
    """The builder module's `validate_manual_dir` for this builder's config and counts."""
    module = sys.modules[type(builder).__module__]
    if builder.builder_config is not None:
        return module.validate_manual_dir(manual_dir, builder.builder_config, builder.SPLIT_COUNTS)
    return module.validate_manual_dir(manual_dir, builder.SPLIT_COUNTS)


def prepare(builder, manual_dir: str) -> list[str]:
    """Validates `manual_dir` for `builder`; builds the dataset only if it is valid.

    Returns:
      The problems found (nothing was written if there are any).
    """
    import tensorflow_datasets as tfds

    problems = manual_dir_problems(builder, manual_dir)
    if problems:
        return problems
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return []


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from mtpsl_datasets.nyuv2.mtan_layout import format_problems

    manual_dir = os.path.abspath(os.path.expanduser(_MANUAL_DIR.value))
    cls = builder_class(_DATASET.value)
    problem = config_problem(cls, _CONFIG.value)
    if problem:
        sys.exit(problem)
    builder = cls(data_dir=os.path.expanduser(_DATA_DIR.value), config=_CONFIG.value)
    if builder.is_prepared():
        print(f"{builder.name}: already prepared at {builder.data_dir}")
        return
    problems = prepare(builder, manual_dir)
    if problems:
        sys.exit(format_problems(builder.name, manual_dir, problems))
    print(f"{builder.name}: prepared at {builder.data_dir}")
    for name, split in builder.info.splits.items():
        print(f"  {name}: {split.num_examples} examples")


if __name__ == "__main__":
    flags.mark_flags_as_required(["dataset", "manual_dir", "data_dir"])
    app.run(main)
