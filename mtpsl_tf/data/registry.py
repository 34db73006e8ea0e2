"""Datasets by name: which TFDS builder, which tasks, STL references, official splits."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from mtpsl_tf.registry import Registry
from mtpsl_tf.tasks.base import Task

DATASETS: Registry = Registry("dataset")


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
        flip: horizontal flips in training augmentation (Cityscapes).
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
