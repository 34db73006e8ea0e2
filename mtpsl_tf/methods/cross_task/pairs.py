"""Which (image, ordered pair) items the cross-task losses use.

For a mapping m_{a->b} (task a's mapping input -> task b):
- fitting / Direct-Map items: b labelled (its label supervises the output); in the
  `unlabelled_source` mode also a unlabelled (the paper's partial-label definition: the
  unlabelled task's prediction is mapped to the labelled task), in `all` mode any a;
- perceptual items: a labelled (its prediction and label are both mapped); in the
  `unlabelled_source` mode b unlabelled (the mapping leads into the unlabelled task's space),
  in `all` mode any b (X-task with full labels).
"""

from __future__ import annotations

from typing import Dict

import tensorflow as tf

PAIR_MODES = ("unlabelled_source", "all")


def resolve_mode(mode: str, setting_kind: str) -> str:
    """"auto" -> "all" for full labels (no image has an unlabelled task), else unlabelled_source."""
    if mode != "auto":
        return mode
    return "all" if setting_kind == "full" else "unlabelled_source"


def fit_items(label_mask: Dict[str, tf.Tensor], source: str, target: str, mode: str) -> tf.Tensor:
    """float32 `[B]`: 1 where m_{source->target} is fitted to target's label."""
    target_on = tf.cast(label_mask[target], tf.float32)
    if mode == "all":
        return target_on
    return target_on * (1.0 - tf.cast(label_mask[source], tf.float32))


def perceptual_items(label_mask: Dict[str, tf.Tensor], source: str, target: str, mode: str) -> tf.Tensor:
    """float32 `[B]`: 1 where source's prediction and label are compared through m_{source->target}."""
    source_on = tf.cast(label_mask[source], tf.float32)
    if mode == "all":
        return source_on
    return source_on * (1.0 - tf.cast(label_mask[target], tf.float32))
