"""The synthetic dataset's DatasetSpec: NYU-v2's tasks with the renderer's classes, rendered
by the TFDS builder at the size the flags choose."""
from __future__ import annotations

from mtpsl_datasets.nyuv2.spec import nyu_tasks
from mtpsl_datasets.synthetic import render
from mtpsl_tf.data.registry import DATASETS, DatasetSpec

# Synthetic STL references: measured with configs/synthetic/stl_*.flags (see README).
SYNTHETIC_STL = {"onelabel": {}, "full": {}}


def synthetic_config(name: str, height: int = 0, width: int = 0, num_train: int = 0, num_test: int = 0):
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


SPEC = DATASETS.register("synthetic")(DatasetSpec(
    name="synthetic", builder_module="mtpsl_datasets.synthetic", builder_name="mtpsl_synthetic",
    builder_class_name="MtpslSynthetic", default_config="small",
    make_tasks=lambda _: nyu_tasks(render.NUM_CLASSES), num_classes=0,
    stl_reference=SYNTHETIC_STL, generated=True, custom_config=synthetic_config,
    class_names={render.NUM_CLASSES: render.CLASS_NAMES},
))
