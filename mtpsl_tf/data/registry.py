"""Datasets by name: which TFDS builder, which tasks, STL references, official splits, and
the augmentation policies (by name) that bring their examples to the training contract.

Each dataset lives in its own folder `datasets/<name>/` (package `mtpsl_datasets.<name>`):
its `spec.py` builds the DatasetSpec and registers it in DATASETS; the one line naming that
module in `DATASETS`' module list below is all that adds it here."""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from mtpsl_tf.registry import Registry

if TYPE_CHECKING:  # the spec modules import tasks (and TensorFlow) only when asked for them
    from mtpsl_tf.tasks.base import Task

# One line per dataset: the module that registers its DatasetSpec.
DATASETS: Registry = Registry("dataset", modules=(
    "mtpsl_datasets.nyuv2.spec",
    "mtpsl_datasets.cityscapes.spec",
    "mtpsl_datasets.pascal_context.spec",
    "mtpsl_datasets.synthetic.spec",
))
# One line per augmentation-policy module.
AUGMENTATIONS: Registry = Registry("augmentation policy", modules=(
    "mtpsl_tf.data.policies.mtan",
    "mtpsl_tf.data.policies.mtl_pytorch",
))

# A transform maps (image, labels, seed) -> (image, labels) for training, (image, labels) ->
# (image, labels) for testing, (image, labels, seed) -> (image1, labels1, image2, labels2)
# for two-view sampling; see AugmentationPolicy.
Transform = Callable[..., Tuple[Any, ...]]


@dataclasses.dataclass(frozen=True)
class AugmentationPolicy:
    """The training and test transforms of one family of datasets.

    Each `make_*` is called once per pipeline (a transform may hold compiled code) with the
    output `size` (height, width), for training `flip` (DatasetSpec.flip), and last the
    dataset's `tasks` (whose label hooks say how each label resamples, flips, zooms; None:
    looked up by label name); it returns a
    function of one example in the DESIGN.md contract (`image` float [H, W, 3] in [0, 1],
    `labels` dict task -> [H, W, ...]), `seed` an int [2] stateless seed.

    Attributes:
        name: registry name (DatasetSpec.train_policy / test_policy).
        make_train: (size, flip, tasks=None) -> (image, labels, seed) -> (image, labels).
        make_test: (size, tasks=None) -> (image, labels) -> (image, labels), or -> None for
            the identity.
        make_two_views: (size, flip, tasks=None) -> (image, labels, seed) -> (image1, labels1, image2,
            labels2), the two views of MTPSL; None if the policy has no two-view sampling.
        resizes: the outputs have the given `size` whatever the input's (so the input may
            vary in size and DatasetSpec.image_size / --height --width choose the size).
    """

    name: str
    make_train: Callable[..., Transform]
    make_test: Callable[..., Optional[Transform]]
    make_two_views: Optional[Callable[..., Transform]] = None
    resizes: bool = False




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
        builder_module: package of the TFDS builder (imported on demand).
        builder_name: the TFDS builder's registered name.
        builder_class_name: the builder class's name in `builder_module` (getting it imports
            the builder, which registers it with TFDS).
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
        class_names: number of semantic classes -> their names, where known (model cards).
    """

    name: str
    builder_module: str
    builder_name: str
    builder_class_name: str
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
    class_names: Mapping[int, Tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def classes_for(self, config_name: str) -> int:
        return self.classes_by_config.get(config_name, self.num_classes)

    def tasks(self, config_name: str = "") -> List[Task]:
        return self.make_tasks(self.classes_for(config_name or self.default_config))

    def import_builder(self):
        """Imports the builder's module (registers it with TFDS) and returns the module."""
        module = importlib.import_module(self.builder_module)
        getattr(module, self.builder_class_name)  # a package exports its builder lazily
        return module

    def builder_class(self):
        """The TFDS builder class (imported, thus registered)."""
        return getattr(self.import_builder(), self.builder_class_name)


def task_names(tasks: List[Task]) -> Tuple[str, ...]:
    return tuple(t.name for t in tasks)
