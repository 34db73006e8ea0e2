"""Cityscapes' DatasetSpec: tasks, configs, STL references (SPEC section 4), split files."""
from __future__ import annotations

from typing import List

from mtpsl_datasets.nyuv2.spec import mtan_reference
from mtpsl_tf.data.registry import DATASETS, DatasetSpec


def cityscapes_tasks(num_classes: int) -> List:
    from mtpsl_tf.tasks.depth import Depth
    from mtpsl_tf.tasks.semantic import Semantic

    return [Semantic(num_classes), Depth()]


SPEC = DATASETS.register("cityscapes")(DatasetSpec(
    name="cityscapes", builder_module="mtpsl_datasets.cityscapes", builder_name="mtpsl_cityscapes",
    builder_class_name="MtpslCityscapes", default_config="c7_128x256",
    make_tasks=cityscapes_tasks, num_classes=7,
    classes_by_config={"c7_128x256": 7, "c7_256x512": 7, "c19_128x256": 19, "c19_256x512": 19},
    stl_reference={"onelabel": mtan_reference(70.04, 0.0140), "full": mtan_reference(74.07, 0.0124)},
    split_files={"onelabel": "cityscapes_onelabel.npy"},
    flip=True,
))
