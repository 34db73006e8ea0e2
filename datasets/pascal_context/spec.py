"""PASCAL-Context's DatasetSpec: Multi-Task-Learning-PyTorch's recipe (configs/pascal/*.yml,
utils/config.py: 512 x 512 training and validation size, their loss weights), the STL
references of Supplement Tab. 6 and how a `mtpsl_pascal_context` example meets the contract."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Sequence

from mtpsl_tf.data.registry import DATASETS, DatasetSpec


def pascal_tasks(num_classes: int) -> List:
    from mtpsl_tf.tasks.edge import Edge
    from mtpsl_tf.tasks.normal import Normal
    from mtpsl_tf.tasks.saliency import Saliency
    from mtpsl_tf.tasks.semantic import HumanParts, Semantic

    return [Semantic(num_classes, name="semseg"), HumanParts(),
            Normal(name="normals", loss="l1"), Saliency(name="sal"), Edge(name="edge")]


def _semseg(value, example):
    import tensorflow as tf

    return tf.where(value == 255, -1, tf.cast(value, tf.int32))


def _human_parts(value, example):
    import tensorflow as tf

    return tf.where(example["has_human_parts"], tf.cast(value, tf.int32), 0)


def _channel_map(value, example):
    import tensorflow as tf

    return tf.cast(value, tf.float32)[..., None]


# Feature -> (stored value, whole example) -> label before the cast to the task's dtype;
# features not listed (normals) are taken as they are.
DECODE_LABEL: Mapping[str, Callable[[Any, Mapping[str, Any]], Any]] = {
    "semseg": _semseg, "human_parts": _human_parts, "sal": _channel_map, "edge": _channel_map,
}


def pascal_to_contract(example: Mapping[str, Any], tasks: Sequence) -> Dict[str, Any]:
    """A `mtpsl_pascal_context` example -> the contract, at the image's own size.

    image uint8 -> float32 / 255; semseg 255 (ignore) -> -1; human_parts all-zero unless
    `has_human_parts` (the augmentation's AddIgnoreRegions then makes an all-zero map all -1);
    normals as they are (all-zero = invalid); sal, edge -> float32 [H, W, 1].
    """
    import tensorflow as tf

    labels = {}
    for t in tasks:
        value = example[t.name]
        if t.name in DECODE_LABEL:
            value = DECODE_LABEL[t.name](value, example)
        labels[t.name] = tf.cast(value, t.label_signature(None, None).dtype)
    return {"image": tf.cast(example["image"], tf.float32) / 255.0, "labels": labels,
            "index": tf.cast(example["index"], tf.int64)}


def pascal_reference(seg: float, parts: float, normals: float, sal: float, edge: float) -> Dict[str, float]:
    """Supplement Tab. 6 STL rows (percentages -> our fractions; normals in degrees)."""
    return {"semseg/miou": seg / 100.0, "human_parts/miou": parts / 100.0, "normals/mean": normals,
            "sal/miou": sal / 100.0, "edge/odsF": edge / 100.0}


# Supplement Tab. 6 (its one-label STL row is printed with type "MTL"; the values are the STL ones).
SPEC = DATASETS.register("pascal_context")(DatasetSpec(
    name="pascal_context", builder_module="mtpsl_datasets.pascal_context",
    builder_name="mtpsl_pascal_context", builder_class_name="MtpslPascalContext",
    default_config="", make_tasks=pascal_tasks, num_classes=21,
    stl_reference={
        "full": pascal_reference(66.4, 58.9, 13.9, 66.7, 68.3),
        "randomlabels": pascal_reference(60.9, 55.3, 14.7, 64.8, 66.8),
        "onelabel": pascal_reference(47.7, 56.2, 16.0, 61.9, 64.0),
    },
    split_files={"onelabel": "pascal_context_onelabel.json",
                 "randomlabels": "pascal_context_randomlabels.json"},
    flip=True, to_contract=pascal_to_contract, train_policy="mtl_pytorch",
    test_policy="mtl_pytorch", image_size=(512, 512), image_id_feature="image_id",
    loss_weights={"semseg": 1.0, "human_parts": 2.0, "normals": 10.0, "sal": 5.0, "edge": 50.0},
    cacheable=False,
))
