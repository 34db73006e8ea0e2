"""Ordered task pairs (s, t), s != t: their index among the T(T-1) pairs, which pairs of an
image are active under a consistency mode, and bounds on their number."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

MODES = ("mtpsl", "mtpsl_plus", "full")


def num_pairs(num_tasks: int) -> int:
    """Number of ordered off-diagonal task pairs, T(T-1)."""
    return num_tasks * (num_tasks - 1)


def pair_index(source: int, target: int, num_tasks: int) -> int:
    """Row-major index of the ordered pair (source, target), source != target, among the T(T-1)
    off-diagonal pairs: `source*(T-1) + (target if target < source else target-1)`."""
    for name, value in (("source", source), ("target", target)):
        if not 0 <= int(value) < num_tasks:
            raise ValueError(f"{name} task {value} is out of range for {num_tasks} tasks")
    if source == target:
        raise ValueError(f"pair ({source}, {target}): source and target task must differ")
    source, target = int(source), int(target)
    return source * (num_tasks - 1) + (target if target < source else target - 1)


def pair_index_tf(source, target, num_tasks: int) -> tf.Tensor:
    """Vectorised `pair_index` for int tensors of any (equal) shape; int32 result.

    No range/diagonal check (it must compile under XLA): source == target gives a meaningless index.
    """
    source = tf.cast(source, tf.int32)
    target = tf.cast(target, tf.int32)
    return source * (num_tasks - 1) + tf.where(target < source, target, target - 1)


def pair_index_table(num_tasks: int) -> np.ndarray:
    """int `[T, T]` table of `pair_index(s, t)`, -1 on the diagonal."""
    table = np.full((num_tasks, num_tasks), -1, dtype=np.int64)
    for s in range(num_tasks):
        for t in range(num_tasks):
            if s != t:
                table[s, t] = pair_index(s, t, num_tasks)
    return table


def off_diagonal(num_tasks: int) -> list:
    """The ordered pairs [(s, t), ...] in pair-index order."""
    return [(s, t) for s in range(num_tasks) for t in range(num_tasks) if s != t]


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown consistency mode {mode!r}; expected one of {MODES}")


def stack_label_mask(label_mask, task_names: Sequence[str]) -> tf.Tensor:
    """The batch's label masks (dict task -> `[B]`, the data contract, or already `[B, T]`)
    as float `[B, T]` in `task_names` order."""
    if isinstance(label_mask, Mapping):
        missing = [name for name in task_names if name not in label_mask]
        if missing:
            raise KeyError(f"label_mask has no entry for tasks {missing}; has {list(label_mask)}")
        return tf.stack([tf.cast(label_mask[name], tf.float32) for name in task_names], axis=1)
    return tf.cast(tf.convert_to_tensor(label_mask), tf.float32)


def active_pairs(label_mask, mode: str) -> tf.Tensor:
    """float `[B, T, T]`, 1 where the ordered pair (s, t) of image b is used, from `[B, T]` masks.

    mtpsl: s unlabelled and t labelled (the reference's `w == 0` sources, `w == 1` targets);
    mtpsl_plus ("Ours+"): any s and labelled t; full: every ordered pair, whatever the mask (the
    reference's `full` iterates all s, t). The diagonal is always 0.
    """
    check_mode(mode)
    label_mask = tf.cast(tf.convert_to_tensor(label_mask), tf.float32)
    if label_mask.shape.rank != 2:
        raise ValueError(f"label_mask must be [B, T], got shape {label_mask.shape}")
    labelled = tf.cast(label_mask > 0.5, tf.float32)
    num_tasks = label_mask.shape[1]
    eye_off = 1.0 - tf.eye(num_tasks, dtype=tf.float32)
    if mode == "full":
        active = tf.ones_like(labelled)[:, :, None] * tf.ones_like(labelled)[:, None, :]
    elif mode == "mtpsl_plus":
        active = tf.ones_like(labelled)[:, :, None] * labelled[:, None, :]
    else:
        active = (1.0 - labelled)[:, :, None] * labelled[:, None, :]
    return active * eye_off


def active_pair_items(label_mask, mode: str) -> tf.Tensor:
    """float `[B, P]`: `active_pairs` at the off-diagonal pairs, in pair-index order."""
    num_tasks = label_mask.shape[1]
    active = active_pairs(label_mask, mode)
    rows = tf.constant([s * num_tasks + t for s, t in off_diagonal(num_tasks)], tf.int32)
    return tf.gather(tf.reshape(active, [-1, num_tasks * num_tasks]), rows, axis=1)


def max_active_pairs(num_tasks: int, mode: str, labelled_counts: Sequence[int] | None = None) -> int:
    """Upper bound on the active ordered pairs of one image.

    labelled_counts: the numbers of labelled tasks an image may have under the setting
    (None: any of 0..T). mtpsl: k(T-k); mtpsl_plus: k(T-1); full: T(T-1).
    """
    check_mode(mode)
    counts = list(range(num_tasks + 1)) if labelled_counts is None else list(labelled_counts)
    if mode == "full":
        return num_pairs(num_tasks)
    per_k = (lambda k: k * (num_tasks - k)) if mode == "mtpsl" else (lambda k: k * (num_tasks - 1))
    return max(per_k(k) for k in counts)
