"""tf.data pipelines: TFDS examples -> batches in the DESIGN.md contract.

Training order and augmentation depend only on (seed, epoch, example index), so a run
resumed at epoch e sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Sequence

import numpy as np
import tensorflow as tf

from mtpsl_tf.config import DataConfig
from mtpsl_tf.data import settings as settings_lib
from mtpsl_tf.data.registry import DATASETS, DatasetSpec
from mtpsl_tf.tasks.base import Task


@dataclasses.dataclass
class DataBundle:
    """What training needs from the data side.

    Attributes:
        spec: the dataset's registry entry.
        tasks: the tasks, in the dataset's order.
        train_examples, test_examples: split sizes.
        label_masks: uint8 `[N_train, T]` (row = dataset index), in task order.
        height, width: training image size.
        builder: the TFDS builder (prepared).
    """

    spec: DatasetSpec
    tasks: List[Task]
    train_examples: int
    test_examples: int
    label_masks: np.ndarray
    height: int
    width: int
    builder: object


def make_builder(config: DataConfig, spec: DatasetSpec):
    """Instantiates (and for generated datasets, prepares) the TFDS builder."""
    import tensorflow_datasets as tfds

    data_dir = os.path.expanduser(config.data_dir) if config.data_dir else None
    kwargs = {"data_dir": data_dir}
    spec.import_builder()
    if spec.custom_config is not None:
        kwargs["config"] = spec.custom_config(
            config.dataset_config or spec.default_config, height=config.height, width=config.width,
            num_train=config.num_train, num_test=config.num_test)
    elif config.dataset_config or spec.default_config:
        kwargs["config"] = config.dataset_config or spec.default_config
    builder = tfds.builder(spec.builder_name, **kwargs)
    if spec.generated:
        builder.download_and_prepare()
    elif not _is_prepared(builder):
        raise FileNotFoundError(
            f"dataset {spec.name!r} is not prepared in {builder.data_dir!r}; run "
            f"`python datasets/prepare.py --dataset={spec.name} --manual_dir=<raw data> "
            f"--data_dir={config.data_dir or '<data_dir>'}` first (see datasets/README.md)")
    return builder


def _is_prepared(builder) -> bool:
    return os.path.isfile(os.path.join(builder.data_dir, "dataset_info.json"))


def resolve_label_masks(config: DataConfig, spec: DatasetSpec, names: Sequence[str], num_examples: int,
                        split_dir: str = "") -> np.ndarray:
    """Per-example label masks `[N, T]` for the configured setting.

    With `split_dir`, a setting that has an official split file (e.g. NYU `onelabel`) is read
    from it; otherwise masks are drawn from `setting_seed`.
    """
    setting = settings_lib.parse_setting(config.setting)
    kind = getattr(setting, "kind", config.setting)
    if split_dir and kind in spec.split_files:
        path = os.path.join(split_dir, spec.split_files[kind])
        masks = settings_lib.masks_from_split_file(path, list(names), num_examples=num_examples)
    else:
        masks = settings_lib.label_masks(setting, num_examples, list(names), config.setting_seed)
    settings_lib.validate_masks(masks, list(names), source=f"--setting={config.setting}")
    if masks.shape[0] != num_examples:
        raise ValueError(f"--setting={config.setting}: masks cover {masks.shape[0]} examples, "
                         f"the training split has {num_examples}")
    return masks


def load(config: DataConfig, split_dir: str = "") -> DataBundle:
    """Prepares the dataset named by `config.dataset` and resolves its label masks."""
    spec = DATASETS.get(config.dataset)
    builder = make_builder(config, spec)
    tasks = spec.tasks(config.dataset_config)
    info = builder.info
    train_n, test_n = info.splits["train"].num_examples, info.splits["test"].num_examples
    if train_n == 0 or test_n == 0:
        raise ValueError(f"dataset {spec.name!r} in {builder.data_dir!r} has an empty split "
                         f"(train={train_n}, test={test_n})")
    shape = info.features["image"].shape
    masks = resolve_label_masks(config, spec, [t.name for t in tasks], train_n, split_dir)
    return DataBundle(spec, tasks, train_n, test_n, masks, shape[0], shape[1], builder)


def _to_contract(example, tasks: Sequence[Task]) -> Dict[str, object]:
    labels = {}
    for t in tasks:
        dtype = t.label_signature(None, None).dtype
        labels[t.name] = tf.cast(example[t.name], dtype)
    return {"image": tf.cast(example["image"], tf.float32), "labels": labels,
            "index": tf.cast(example["index"], tf.int64)}


def _attach_masks(element, masks: tf.Tensor, names: Sequence[str]):
    row = tf.gather(masks, element["index"])
    element["label_mask"] = {n: row[i] for i, n in enumerate(names)}
    return element


def _augment(element, seed: tf.Tensor, flip: bool, two_views: bool):
    from mtpsl_tf.data import augment

    key = tf.random.experimental.stateless_fold_in(seed, element["index"])
    if two_views:
        image1, labels1, image2, labels2 = augment.two_views(element["image"], element["labels"], key, flip=flip)
        element.update(image=image1, labels=labels1, image_aug=image2, labels_aug=labels2)
        return element
    image, labels = augment.random_scale_crop(element["image"], element["labels"], key)
    if flip:
        image, labels = augment.random_horizontal_flip(image, labels, tf.random.experimental.stateless_fold_in(key, 1))
    element.update(image=image, labels=labels)
    return element


def train_dataset(bundle: DataBundle, config: DataConfig, *, seed: int, initial_epoch: int, epochs: int,
                  batch_size: int, two_views: bool = False) -> tf.data.Dataset:
    """Batches for epochs [initial_epoch, epochs), each epoch a full pass, drop_remainder."""
    tasks, names = bundle.tasks, [t.name for t in bundle.tasks]
    masks = tf.constant(bundle.label_masks.astype(np.float32))
    base = bundle.builder.as_dataset(split="train", shuffle_files=False)
    base = base.map(lambda e: _to_contract(e, tasks), num_parallel_calls=tf.data.AUTOTUNE)
    base = base.map(lambda e: _attach_masks(e, masks, names), num_parallel_calls=tf.data.AUTOTUNE)
    if config.cache:
        base = base.cache()
    n = bundle.train_examples

    def one_epoch(epoch: int) -> tf.data.Dataset:
        # Order and augmentation are functions of (seed, epoch) alone: exact resume.
        ds = base.shuffle(n, seed=seed * 1_000_003 + epoch, reshuffle_each_iteration=False)
        if config.augment or two_views:
            epoch_seed = tf.constant([seed, epoch], tf.int64)
            ds = ds.map(lambda e: _augment(e, epoch_seed, bundle.spec.flip, two_views),
                        num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(batch_size, drop_remainder=True)

    if epochs <= initial_epoch:
        raise ValueError(f"nothing to train: epochs={epochs} <= initial_epoch={initial_epoch}")
    ds = one_epoch(initial_epoch)
    for epoch in range(initial_epoch + 1, epochs):
        ds = ds.concatenate(one_epoch(epoch))
    return ds.prefetch(tf.data.AUTOTUNE)


def test_dataset(bundle: DataBundle, batch_size: int) -> tf.data.Dataset:
    tasks = bundle.tasks
    ds = bundle.builder.as_dataset(split="test", shuffle_files=False)
    ds = ds.map(lambda e: _to_contract(e, tasks), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).cache().prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(bundle: DataBundle, batch_size: int, cap: int = 0) -> int:
    steps = bundle.train_examples // batch_size
    if steps == 0:
        raise ValueError(f"--batch_size={batch_size} exceeds the {bundle.train_examples} training examples")
    return min(steps, cap) if cap else steps
