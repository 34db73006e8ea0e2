"""tf.data pipelines: TFDS examples -> batches in the DESIGN.md contract.

Per dataset (its DatasetSpec): `to_contract` turns a TFDS example into the contract at the
example's own size; the `train_policy` (AUGMENTATIONS) augments training examples (or makes
the two views of MTPSL), the `test_policy` transforms test examples and, with augmentation
off, training examples. NYU-v2 / Cityscapes / synthetic: the MTAN scripts' scale-crop, test
examples unchanged. PASCAL-Context: Multi-Task-Learning-PyTorch's flip / scale / rotate and a
fixed resize to 512 x 512 (`augment_pascal`); evaluation during training is at that size, the
reference's validation resolution. Their final evaluation resizes predictions back to each
image's original size and scores there: `original_size_test_dataset` yields the labels at that
size too (`python -m mtpsl_tf.evaluate --protocol=paper`).

Training order and augmentation depend only on (seed, epoch, example index), so a run
resumed at epoch e sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from mtpsl_tf.config import DataConfig
from mtpsl_tf.data import alignment
from mtpsl_tf.data import settings as settings_lib
from mtpsl_tf.data.registry import AUGMENTATIONS, DATASETS, DatasetSpec, default_to_contract
from mtpsl_tf.tasks.base import Task

ImageIds = Union[Sequence[str], Callable[[], Sequence[str]], None]


@dataclasses.dataclass
class DataBundle:
    """What training needs from the data side.

    Attributes:
        spec: the dataset's registry entry.
        tasks: the tasks, in the dataset's order.
        train_examples, test_examples: split sizes.
        label_masks: uint8 `[N_train, T]` (row = dataset index), in task order.
        height, width: training (and evaluation) image size.
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
        builder = _prepare_generated(lambda: tfds.builder(spec.builder_name, **kwargs), builder)
    elif not _is_prepared(builder):
        raise FileNotFoundError(
            f"dataset {spec.name!r} is not prepared in {builder.data_dir!r}; run "
            f"`python datasets/prepare.py --dataset={spec.name} --manual_dir=<raw data> "
            f"--data_dir={config.data_dir or '<data_dir>'}` first (see datasets/README.md)")
    return builder


def _prepare_generated(make: Callable[[], object], builder):
    """Generates `builder`'s data unless it is there; returns a prepared builder.

    The generation runs under an exclusive lock file beside the builder's data folder: runs
    started together on a fresh machine (benchmarks/compare_methods.py --jobs=2) used to
    generate at once, and the second's final rename failed ("Destination ... already
    exists"). The process that waited finds the data prepared and reuses it.
    """
    if _is_prepared(builder):
        return builder
    parent = os.path.dirname(builder.data_dir)
    os.makedirs(parent, exist_ok=True)
    with open(os.path.join(parent, ".prepare.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        builder = make()  # a fresh builder: the data may have been written while waiting
        builder.download_and_prepare()
    return builder


def _is_prepared(builder) -> bool:
    return os.path.isfile(os.path.join(builder.data_dir, "dataset_info.json"))


def image_size(config: DataConfig, spec: DatasetSpec, builder) -> Tuple[int, int]:
    """(height, width) of the training and evaluation images.

    A dataset whose policies resize (e.g. PASCAL-Context) has `spec.image_size`, which
    `--height` / `--width` override; otherwise the builder's image shape (which the synthetic
    builder configs derive from `--height` / `--width`).
    """
    resizes = AUGMENTATIONS.get(spec.train_policy).resizes and AUGMENTATIONS.get(spec.test_policy).resizes
    if spec.image_size is not None:
        if resizes:
            return (config.height or spec.image_size[0], config.width or spec.image_size[1])
        return tuple(spec.image_size)
    shape = builder.info.features["image"].shape
    if shape[0] is None or shape[1] is None:
        raise ValueError(f"dataset {spec.name!r}: its images vary in size (builder image shape "
                         f"{shape}); its DatasetSpec must state the training image_size")
    return shape[0], shape[1]


def read_image_ids(builder, spec: DatasetSpec, split: str = "train") -> List[str]:
    """The `spec.image_id_feature` of every example of `split`, in dataset-index order (row i
    = the example with index i). Decodes only the ids and indices."""
    import tensorflow_datasets as tfds

    feature = spec.image_id_feature
    if not feature:
        raise ValueError(f"dataset {spec.name!r} has no image id feature, so it cannot use split "
                         f"files that list image ids (.json)")
    decoders = tfds.decode.PartialDecoding({feature: True, "index": True})
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
    pairs = sorted((int(e["index"]), e[feature]) for e in tfds.as_numpy(ds))
    if [i for i, _ in pairs] != list(range(len(pairs))):
        raise ValueError(f"dataset {spec.name!r}, split {split!r}: the example indices are not "
                         f"0..{len(pairs) - 1}")
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for _, v in pairs]


def _ids_for(path: str, image_ids: ImageIds):
    """The image ids a split file needs: only .json files list ids (read lazily)."""
    if not str(path).endswith(".json"):
        return None
    return image_ids() if callable(image_ids) else image_ids


def resolve_label_masks(config: DataConfig, spec: DatasetSpec, names: Sequence[str], num_examples: int,
                        split_dir: str = "", image_ids: ImageIds = None) -> np.ndarray:
    """Per-example label masks `[N, T]` for the configured setting.

    With `split_dir`, a setting that has an official split file (e.g. NYU `onelabel`) is read
    from it; otherwise masks are drawn from `setting_seed`. Split files that list image ids
    (PASCAL's .json, also via `file=`) need `image_ids`: the training split's ids in index
    order, or a function returning them (called only then).
    """
    setting = settings_lib.parse_setting(config.setting)
    kind = getattr(setting, "kind", config.setting)
    path = None
    if split_dir and kind in spec.split_files:
        path = os.path.join(split_dir, spec.split_files[kind])
    elif kind == "file":
        path = setting.path
    if path is not None:
        masks = settings_lib.masks_from_split_file(path, list(names), num_examples=num_examples,
                                                   image_ids=_ids_for(path, image_ids))
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
    height, width = image_size(config, spec, builder)
    masks = resolve_label_masks(config, spec, [t.name for t in tasks], train_n, split_dir,
                                image_ids=lambda: read_image_ids(builder, spec, "train"))
    return DataBundle(spec, tasks, train_n, test_n, masks, height, width, builder)


def _attach_masks(element, masks: tf.Tensor, names: Sequence[str]):
    row = tf.gather(masks, element["index"])
    element["label_mask"] = {n: row[i] for i, n in enumerate(names)}
    return element


def _augment(element, seed: tf.Tensor, transform, two_views: bool, align_views: bool = False):
    """The training transform of one element, keyed by (seed, example index). With
    `align_views`, also "view_transform" (float32 [6], data/alignment.py)."""
    key = tf.random.experimental.stateless_fold_in(seed, element["index"])
    if two_views:
        image = alignment.with_coordinates(element["image"]) if align_views else element["image"]
        image1, labels1, image2, labels2 = transform(image, element["labels"], key)
        if align_views:
            (image1, coords1), (image2, coords2) = alignment.split_coordinates(image1), alignment.split_coordinates(image2)
            element["view_transform"] = alignment.view_transform(coords1, coords2)
        element.update(image=image1, labels=labels1, image_aug=image2, labels_aug=labels2)
        return element
    image, labels = transform(element["image"], element["labels"], key)
    element.update(image=image, labels=labels)
    return element


def _apply_test_transform(element, transform):
    image, labels = transform(element["image"], element["labels"])
    element.update(image=image, labels=labels)
    return element


def _size(bundle: DataBundle) -> Tuple[int, int]:
    return (bundle.height, bundle.width)


def _test_transform(bundle: DataBundle):
    """The dataset's test transform (None: identity)."""
    return AUGMENTATIONS.get(bundle.spec.test_policy).make_test(_size(bundle), bundle.tasks)


def check_two_views(spec: DatasetSpec) -> None:
    """Raises ValueError naming the dataset if its training policy has no two-view sampling."""
    policy = AUGMENTATIONS.get(spec.train_policy)
    if policy.make_two_views is None:
        able = [n for n in AUGMENTATIONS if AUGMENTATIONS.get(n).make_two_views is not None]
        raise ValueError(
            f"dataset {spec.name!r}: its augmentation policy {policy.name!r} has no two-view "
            f"sampling, which the method needs (MTPSL trains on two views of each image); two "
            f"views are implemented for the policies {able} only")


def _contract(spec: DatasetSpec):
    return spec.to_contract or default_to_contract


def train_dataset(bundle: DataBundle, config: DataConfig, *, seed: int, initial_epoch: int, epochs: int,
                  batch_size: int, two_views: bool = False, align_views: bool = False) -> tf.data.Dataset:
    """Batches for epochs [initial_epoch, epochs), each epoch a full pass, drop_remainder.
    `align_views` (with `two_views`) adds each example's "view_transform" (data/alignment.py).

    Raises:
      ValueError: if `two_views` and the dataset's policy cannot make two views.
    """
    spec = bundle.spec
    if two_views:
        check_two_views(spec)
    if epochs <= initial_epoch:
        raise ValueError(f"nothing to train: epochs={epochs} <= initial_epoch={initial_epoch}")
    tasks, names = bundle.tasks, [t.name for t in bundle.tasks]
    masks = tf.constant(bundle.label_masks.astype(np.float32))
    to_contract = _contract(spec)
    base = bundle.builder.as_dataset(split="train", shuffle_files=False)
    base = base.map(lambda e: to_contract(e, tasks), num_parallel_calls=tf.data.AUTOTUNE)
    base = base.map(lambda e: _attach_masks(e, masks, names), num_parallel_calls=tf.data.AUTOTUNE)
    augment = config.augment or two_views
    if not augment:
        fixed = _test_transform(bundle)  # deterministic: before the cache
        if fixed is not None:
            base = base.map(lambda e: _apply_test_transform(e, fixed), num_parallel_calls=tf.data.AUTOTUNE)
    if config.cache and spec.cacheable:
        base = base.cache()
    n = bundle.train_examples
    transform: Optional[Callable] = None
    if augment:
        # One transform for all epochs: it may hold compiled code (augment_pascal).
        policy = AUGMENTATIONS.get(spec.train_policy)
        make = policy.make_two_views if two_views else policy.make_train
        transform = make(_size(bundle), spec.flip, tasks)

        # Traced once for all epochs (each epoch's map only calls it): tracing it per epoch
        # took 0.8 s an epoch, 160 s before the first step of a 200-epoch run.
        augment_fn = tf.function(lambda e, epoch_seed: _augment(dict(e), epoch_seed, transform, two_views, align_views))

    def one_epoch(epoch: int) -> tf.data.Dataset:
        # Order and augmentation are functions of (seed, epoch) alone: exact resume.
        ds = base.shuffle(n, seed=seed * 1_000_003 + epoch, reshuffle_each_iteration=False)
        if transform is not None:
            epoch_seed = tf.constant([seed, epoch], tf.int64)
            ds = ds.map(lambda e: augment_fn(e, epoch_seed), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(batch_size, drop_remainder=True)

    ds = one_epoch(initial_epoch)
    for epoch in range(initial_epoch + 1, epochs):
        ds = ds.concatenate(one_epoch(epoch))
    return _shard_by_data(ds).prefetch(tf.data.AUTOTUNE)


def _shard_by_data(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Multi-worker runs split each global batch between the workers (every worker reads the
    dataset, which is one file, and keeps its share of the batches' elements); no effect on
    one machine."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def test_dataset(bundle: DataBundle, batch_size: int) -> tf.data.Dataset:
    """Test batches at the training size (the dataset's test policy), in the builder's order."""
    tasks = bundle.tasks
    to_contract = _contract(bundle.spec)
    ds = bundle.builder.as_dataset(split="test", shuffle_files=False)
    ds = ds.map(lambda e: to_contract(e, tasks), num_parallel_calls=tf.data.AUTOTUNE)
    fixed = _test_transform(bundle)
    if fixed is not None:
        ds = ds.map(lambda e: _apply_test_transform(e, fixed), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size)
    if bundle.spec.cacheable:
        ds = ds.cache()
    return _shard_by_data(ds).prefetch(tf.data.AUTOTUNE)


def _keep_original_labels(element, transform):
    original = dict(element["labels"])
    if transform is not None:
        element = _apply_test_transform(element, transform)
    element["original_labels"] = original
    return element


def original_size_test_dataset(bundle: DataBundle) -> tf.data.Dataset:
    """Unbatched test examples, in the builder's order: "image" and "labels" after the test
    policy (the network's size, as `test_dataset`) plus "original_labels", each task's label
    at the example's own size before any resize (the `paper` evaluation protocol). Examples
    differ in original size, so they are not batched."""
    tasks = bundle.tasks
    to_contract = _contract(bundle.spec)
    fixed = _test_transform(bundle)
    ds = bundle.builder.as_dataset(split="test", shuffle_files=False)
    ds = ds.map(lambda e: to_contract(e, tasks), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(lambda e: _keep_original_labels(e, fixed), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(bundle: DataBundle, batch_size: int, cap: int = 0) -> int:
    steps = bundle.train_examples // batch_size
    if steps == 0:
        raise ValueError(f"--batch_size={batch_size} exceeds the {bundle.train_examples} training examples")
    return min(steps, cap) if cap else steps
