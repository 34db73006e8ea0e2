"""NYU-v2's DatasetSpec: tasks, STL references (SPEC section 4) and the authors' split files."""
from __future__ import annotations

from typing import Dict, List, Optional

from mtpsl_tf.data.registry import DATASETS, DatasetSpec

# NYU-v2 13-class convention (Couprie et al., as used by mtan and the authors).
CLASS_NAMES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects",
               "picture", "sofa", "table", "tv", "wall", "window")


def nyu_tasks(num_classes: int) -> List:
    """semantic (num_classes), depth, normal: NYU-v2's tasks (also the synthetic dataset's)."""
    from mtpsl_tf.tasks.depth import Depth
    from mtpsl_tf.tasks.normal import Normal
    from mtpsl_tf.tasks.semantic import Semantic

    return [Semantic(num_classes), Depth(), Normal()]


def mtan_reference(seg: float, depth: float, normal: Optional[float] = None) -> Dict[str, float]:
    """An STL reference of the mtan datasets (mIoU in percent -> our fraction)."""
    out = {"semantic/miou": seg / 100.0, "depth/abs_err": depth}
    if normal is not None:
        out["normal/mean"] = normal
    return out


SPEC = DATASETS.register("nyuv2")(DatasetSpec(
    name="nyuv2", builder_module="mtpsl_datasets.nyuv2", builder_name="mtpsl_nyuv2",
    builder_class_name="MtpslNyuv2", default_config="", make_tasks=nyu_tasks, num_classes=13,
    stl_reference={
        "onelabel": mtan_reference(26.1113, 0.771502, 30.073763),
        "randomlabels": mtan_reference(28.7153, 0.754012, 28.946388),
        "full": mtan_reference(37.447399999999995, 0.607902, 25.938105),
    },
    split_files={"onelabel": "nyuv2_onelabel.npy", "randomlabels": "nyuv2_randomlabels.npy"},
    class_names={len(CLASS_NAMES): CLASS_NAMES},
))
