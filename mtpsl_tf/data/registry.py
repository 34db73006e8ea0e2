"""Datasets by name: which TFDS builder, which tasks, STL references, official splits, and
the augmentation policies (by name) that bring their examples to the training contract."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from mtpsl_tf.registry import Registry
from mtpsl_tf.tasks.base import Task

DATASETS: Registry = Registry("dataset")
AUGMENTATIONS: Registry = Registry("augmentation policy")

# A transform maps (image, labels, seed) -> (image, labels) for training, (image, labels) ->
# (image, labels) for testing, (image, labels, seed) -> (image1, labels1, image2, labels2)
# for two-view sampling; see AugmentationPolicy.
Transform = Callable[..., Tuple[Any, ...]]


@dataclasses.dataclass(frozen=True)
class AugmentationPolicy:
    """The training and test transforms of one family of datasets.

    Each `make_*` is called once per pipeline (a transform may hold compiled code) with the
    output `size` (height, width) and, for training, `flip` (DatasetSpec.flip); it returns a
    function of one example in the DESIGN.md contract (`image` float [H, W, 3] in [0, 1],
    `labels` dict task -> [H, W, ...]), `seed` an int [2] stateless seed.

    Attributes:
        name: registry name (DatasetSpec.train_policy / test_policy).
        make_train: (size, flip) -> (image, labels, seed) -> (image, labels).
        make_test: (size) -> (image, labels) -> (image, labels), or -> None for the identity.
        make_two_views: (size, flip) -> (image, labels, seed) -> (image1, labels1, image2,
            labels2), the two views of MTPSL; None if the policy has no two-view sampling.
        resizes: the outputs have the given `size` whatever the input's (so the input may
            vary in size and DatasetSpec.image_size / --height --width choose the size).
    """

    name: str
    make_train: Callable[[Tuple[int, int], bool], Transform]
    make_test: Callable[[Tuple[int, int]], Optional[Transform]]
    make_two_views: Optional[Callable[[Tuple[int, int], bool], Transform]] = None
    resizes: bool = False


def _mtan_train(size, flip: bool) -> Transform:
    """The SegNet/MTAN scripts' RandomScaleCrop (+ flip with p 0.5 when `flip`, Cityscapes).
    Keeps the input size; `size` is unused."""
    import tensorflow as tf

    from mtpsl_tf.data import augment

    del size

    def transform(image, labels, seed):
        image, labels = augment.random_scale_crop(image, labels, seed)
        if flip:
            image, labels = augment.random_horizontal_flip(
                image, labels, tf.random.experimental.stateless_fold_in(seed, 1))
        return image, labels

    return transform


def _mtan_two_views(size, flip: bool) -> Transform:
    from mtpsl_tf.data import augment

    del size
    return lambda image, labels, seed: augment.two_views(image, labels, seed, flip=flip)


def _mtl_pytorch_train(size, flip: bool) -> Transform:
    from mtpsl_tf.data import augment_pascal

    return augment_pascal.TrainTransform(size=size, flip=flip)


def _mtl_pytorch_test(size) -> Transform:
    from mtpsl_tf.data import augment_pascal

    return augment_pascal.TestTransform(size=size)


AUGMENTATIONS.register("mtan")(AugmentationPolicy(
    name="mtan", make_train=_mtan_train, make_test=lambda size: None, make_two_views=_mtan_two_views))
# Multi-Task-Learning-PyTorch's PASCAL-Context policy (see data/augment_pascal.py): flip,
# scale (0.75..1.25) and rotation (+-20 degrees), resize to the fixed size; test: resize.
AUGMENTATIONS.register("mtl_pytorch")(AugmentationPolicy(
    name="mtl_pytorch", make_train=_mtl_pytorch_train, make_test=_mtl_pytorch_test, resizes=True))


def default_to_contract(example: Mapping[str, Any], tasks: Sequence[Task]) -> Dict[str, Any]:
    """A TFDS example whose features already follow the contract -> the contract dict
    (`image` float32, each task's label cast to its `label_signature` dtype, `index`)."""
    import tensorflow as tf

    labels = {}
    for t in tasks:
        labels[t.name] = tf.cast(example[t.name], t.label_signature(None, None).dtype)
    return {"image": tf.cast(example["image"], tf.float32), "labels": labels,
            "index": tf.cast(example["index"], tf.int64)}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How to get a dataset and what it contains.

    Attributes:
        name: registry name (the `--dataset` flag).
        builder_module: module defining the TFDS builder (imported on demand).
        builder_name: the TFDS builder's registered name.
        default_config: builder config used when `--dataset_config` is empty.
        make_tasks: `(num_classes) -> [Task]` in the dataset's canonical task order.
        num_classes: semantic classes for the default config (config -> classes in
            `classes_by_config`).
        stl_reference: setting -> {"task/metric": value}: single-task results that
            Delta-MTL is measured against (units as our metrics: mIoU as a fraction).
        split_files: setting -> file name of the authors' split in the splits folder.
        generated: True when the builder renders its data (no manual download).
        custom_config: `(name, height, width, num_train, num_test) -> BuilderConfig or name`
            for generated datasets whose size the flags may override.
        flip: horizontal flips in training augmentation (Cityscapes, PASCAL-Context).
        to_contract: `(example, tasks) -> {"image", "labels", "index"}`: one TFDS example to
            the DESIGN.md contract (before augmentation, at the example's own size).
        train_policy, test_policy: names in AUGMENTATIONS of the training transforms (also
            used for two-view sampling) and of the deterministic test transforms (applied to
            the test split, and to the training split when augmentation is off).
        image_size: (height, width) the policies resize to, for datasets whose images vary in
            size (the builder's image shape has None); None: the builder's image shape.
        image_id_feature: builder feature with each example's id, which the authors' .json
            split files list (PASCAL-Context: "image_id"); "" if there is none.
        loss_weights: task -> fixed loss weight of the reference recipe; tasks not listed
            weigh 1.
        cacheable: the decoded training examples fit in memory (`--cache`); False for
            datasets too large for it (PASCAL-Context: ~7 MB per decoded example).
    """

    name: str
    builder_module: str
    builder_name: str
    default_config: str
    make_tasks: Callable[[int], List[Task]]
    num_classes: int
    classes_by_config: Mapping[str, int] = dataclasses.field(default_factory=dict)
    stl_reference: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)
    split_files: Mapping[str, str] = dataclasses.field(default_factory=dict)
    generated: bool = False
    flip: bool = False
    custom_config: Optional[Callable[..., object]] = None
    to_contract: Callable[[Mapping[str, Any], Sequence[Task]], Dict[str, Any]] = default_to_contract
    train_policy: str = "mtan"
    test_policy: str = "mtan"
    image_size: Optional[Tuple[int, int]] = None
    image_id_feature: str = ""
    loss_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    cacheable: bool = True

    def classes_for(self, config_name: str) -> int:
        return self.classes_by_config.get(config_name, self.num_classes)

    def tasks(self, config_name: str = "") -> List[Task]:
        return self.make_tasks(self.classes_for(config_name or self.default_config))

    def import_builder(self):
        """Imports the builder's module (registers it with TFDS) and returns the module."""
        return importlib.import_module(self.builder_module)


def _nyu_tasks(num_classes: int) -> List[Task]:
    from mtpsl_tf.tasks.depth import Depth
    from mtpsl_tf.tasks.normal import Normal
    from mtpsl_tf.tasks.semantic import Semantic

    return [Semantic(num_classes), Depth(), Normal()]


def _cityscapes_tasks(num_classes: int) -> List[Task]:
    from mtpsl_tf.tasks.depth import Depth
    from mtpsl_tf.tasks.semantic import Semantic

    return [Semantic(num_classes), Depth()]


def _ref(seg: float, depth: float, normal: Optional[float] = None) -> Dict[str, float]:
    out = {"semantic/miou": seg / 100.0, "depth/abs_err": depth}
    if normal is not None:
        out["normal/mean"] = normal
    return out


# SPEC section 4: the STL references the authors' scripts use (mIoU converted to a fraction).
DATASETS.register("nyuv2")(DatasetSpec(
    name="nyuv2", builder_module="mtpsl_datasets.nyuv2", builder_name="mtpsl_nyuv2",
    default_config="", make_tasks=_nyu_tasks, num_classes=13,
    stl_reference={
        "onelabel": _ref(26.1113, 0.771502, 30.073763),
        "randomlabels": _ref(28.7153, 0.754012, 28.946388),
        "full": _ref(37.447399999999995, 0.607902, 25.938105),
    },
    split_files={"onelabel": "nyuv2_onelabel.npy", "randomlabels": "nyuv2_randomlabels.npy"},
))

DATASETS.register("cityscapes")(DatasetSpec(
    name="cityscapes", builder_module="mtpsl_datasets.cityscapes", builder_name="mtpsl_cityscapes",
    default_config="c7_128x256", make_tasks=_cityscapes_tasks, num_classes=7,
    classes_by_config={"c7_128x256": 7, "c7_256x512": 7, "c19_128x256": 19, "c19_256x512": 19},
    stl_reference={"onelabel": _ref(70.04, 0.0140), "full": _ref(74.07, 0.0124)},
    split_files={"onelabel": "cityscapes_onelabel.npy"},
    flip=True,
))

def _pascal_tasks(num_classes: int) -> List[Task]:
    from mtpsl_tf.tasks.edge import Edge
    from mtpsl_tf.tasks.normal import Normal
    from mtpsl_tf.tasks.saliency import Saliency
    from mtpsl_tf.tasks.semantic import Semantic

    return [Semantic(num_classes, name="semseg"), Semantic(7, name="human_parts"),
            Normal(name="normals", loss="l1"), Saliency(name="sal"), Edge(name="edge")]


def _pascal_to_contract(example: Mapping[str, Any], tasks: Sequence[Task]) -> Dict[str, Any]:
    """A `mtpsl_pascal_context` example -> the contract, at the image's own size.

    image uint8 -> float32 / 255; semseg 255 (ignore) -> -1; human_parts all-zero unless
    `has_human_parts` (the augmentation's AddIgnoreRegions then makes an all-zero map all -1);
    normals as they are (all-zero = invalid); sal, edge -> float32 [H, W, 1].
    """
    import tensorflow as tf

    labels = {}
    for t in tasks:
        value = example[t.name]
        if t.name == "semseg":
            value = tf.where(value == 255, -1, tf.cast(value, tf.int32))
        elif t.name == "human_parts":
            value = tf.where(example["has_human_parts"], tf.cast(value, tf.int32), 0)
        elif t.name in ("sal", "edge"):
            value = tf.cast(value, tf.float32)[..., None]
        labels[t.name] = tf.cast(value, t.label_signature(None, None).dtype)
    return {"image": tf.cast(example["image"], tf.float32) / 255.0, "labels": labels,
            "index": tf.cast(example["index"], tf.int64)}


# Multi-Task-Learning-PyTorch's PASCAL-Context recipe (configs/pascal/*.yml, utils/config.py):
# 512 x 512 training and validation size, their loss weights.
def _pascal_ref(seg: float, parts: float, normals: float, sal: float, edge: float) -> Dict[str, float]:
    """Supplement Tab. 6 STL rows (percentages -> our fractions; normals in degrees)."""
    return {"semseg/miou": seg / 100.0, "human_parts/miou": parts / 100.0, "normals/mean": normals,
            "sal/miou": sal / 100.0, "edge/odsF": edge / 100.0}


# Supplement Tab. 6 (its one-label STL row is printed with type "MTL"; the values are the STL ones).
DATASETS.register("pascal_context")(DatasetSpec(
    name="pascal_context", builder_module="mtpsl_datasets.pascal_context",
    builder_name="mtpsl_pascal_context", default_config="", make_tasks=_pascal_tasks,
    num_classes=21,
    stl_reference={
        "full": _pascal_ref(66.4, 58.9, 13.9, 66.7, 68.3),
        "randomlabels": _pascal_ref(60.9, 55.3, 14.7, 64.8, 66.8),
        "onelabel": _pascal_ref(47.7, 56.2, 16.0, 61.9, 64.0),
    },
    split_files={"onelabel": "pascal_context_onelabel.json",
                 "randomlabels": "pascal_context_randomlabels.json"},
    flip=True, to_contract=_pascal_to_contract, train_policy="mtl_pytorch",
    test_policy="mtl_pytorch", image_size=(512, 512), image_id_feature="image_id",
    loss_weights={"semseg": 1.0, "human_parts": 2.0, "normals": 10.0, "sal": 5.0, "edge": 50.0},
    cacheable=False,
))


def _synthetic_tasks() -> List[Task]:
    from mtpsl_tf.data import synthetic  # its class count is the renderer's

    return _nyu_tasks(synthetic.NUM_CLASSES)


# Synthetic STL references: measured with configs/synthetic/stl_*.flags (see README).
SYNTHETIC_STL = {"onelabel": {}, "full": {}}

DATASETS.register("synthetic")(DatasetSpec(
    name="synthetic", builder_module="mtpsl_datasets.synthetic", builder_name="mtpsl_synthetic",
    default_config="small", make_tasks=lambda _: _synthetic_tasks(), num_classes=0,
    stl_reference=SYNTHETIC_STL, generated=True, custom_config=lambda *a, **k: _synthetic_config(*a, **k),
))


def _synthetic_config(name: str, height: int = 0, width: int = 0, num_train: int = 0, num_test: int = 0):
    """The named synthetic config, or a derived one when a size/count flag overrides it."""
    from mtpsl_datasets.synthetic import MtpslSynthetic, SyntheticConfig

    known = {c.name: c for c in MtpslSynthetic.BUILDER_CONFIGS}
    if name not in known:
        raise ValueError(f"unknown synthetic --dataset_config {name!r}; expected one of {sorted(known)}")
    base = known[name]
    values = dict(height=height or base.height, width=width or base.width,
                  num_train=num_train or base.num_train, num_test=num_test or base.num_test, seed=base.seed)
    if all(values[k] == getattr(base, k) for k in values):
        return name
    tag = "{height}x{width}_{num_train}_{num_test}".format(**values)
    return SyntheticConfig(name=f"{name}_{tag}", description=f"{name} resized to {tag}", **values)


def task_names(tasks: List[Task]) -> Tuple[str, ...]:
    return tuple(t.name for t in tasks)
