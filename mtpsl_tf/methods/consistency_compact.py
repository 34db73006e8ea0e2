"""The consistency loss computed on the ACTIVE (image, pair) items only, with fixed shapes.

`consistency.consistency_loss` embeds every (image, ordered pair) item and masks the
inactive ones: simple, but in the one-label setting on NYU-v2 only 2 of the 6 pairs of an
image are active, so it does 3x the reference's mapping-net work. Here the active items
are gathered into a fixed number of slots, `capacity` (an upper bound on active items per
batch that the method derives from the mode and the label setting), so the mapping net
runs exactly as many embeddings as the reference (when the bound is tight), the step
still traces once and compiles under XLA, and unused slots are masked out.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import tensorflow as tf

from mtpsl_tf.methods import consistency as ref
from mtpsl_tf.models.mapping import MappingNet, num_pairs


def max_active_pairs(num_tasks: int, mode: str, labelled_counts: Sequence[int] | None = None) -> int:
    """Upper bound on the active ordered pairs of one image.

    labelled_counts: the numbers of labelled tasks an image may have under the setting
    (None: any of 0..T). mtpsl: k(T-k); mtpsl_plus: k(T-1); full: T(T-1).
    """
    if mode not in ref.MODES:
        raise ValueError(f"unknown consistency mode {mode!r}; expected one of {ref.MODES}")
    counts = list(range(num_tasks + 1)) if labelled_counts is None else list(labelled_counts)
    if mode == "full":
        return num_pairs(num_tasks)
    per_k = (lambda k: k * (num_tasks - k)) if mode == "mtpsl" else (lambda k: k * (num_tasks - 1))
    return max(per_k(k) for k in counts)


def _select_items(active: tf.Tensor, capacity: int):
    """Slots for the active items of `active` `[B, P]`: (image, pair, valid), each `[capacity]`.

    Active items come first (stable order: image-major, then pair index); remaining slots
    repeat inactive items and are marked invalid.
    """
    pairs = active.shape[1]
    flat = tf.reshape(active, [-1])
    order = tf.argsort(-flat, stable=True)[:capacity]
    return order // pairs, order % pairs, tf.gather(flat, order)


def consistency_loss_compact(
    mapping_net: MappingNet,
    preds: Mapping[str, tf.Tensor],
    labels: Mapping[str, tf.Tensor],
    feat,
    label_mask,
    mode: str,
    capacity: int,
    seed=None,
    gumbel_noise=None,
    reg_weight: float = 0.5,
    training: bool = True,
    task_kinds: Mapping[str, str] | None = None,
) -> tf.Tensor:
    """Per-image sum of the active pairs' losses, float `[B]`; same value as
    `consistency.consistency_loss` when `capacity` >= the number of active items.

    Args:
        capacity: static number of item slots (e.g. B * max_active_pairs(...)).
        seed: int `[2]` stateless seed of the semantic Gumbel noise (one sample per slot).
        gumbel_noise: alternatively explicit noise `[capacity, H, W, C]` (tests use zeros).
        Others: as `consistency.consistency_loss`.
    """
    names = list(mapping_net.task_names)
    num_tasks = len(names)
    kinds = ref._task_kinds(names, task_kinds)
    feat = tf.convert_to_tensor(feat)
    mask = ref._stack_label_mask(label_mask, names)
    active = ref.active_pairs(mask, mode)
    off_diagonal = [(s, t) for s in range(num_tasks) for t in range(num_tasks) if s != t]
    rows = tf.constant([s * num_tasks + t for s, t in off_diagonal], tf.int32)
    active = tf.gather(tf.reshape(active, [-1, num_tasks * num_tasks]), rows, axis=1)  # [B, P]
    image, pair, valid = _select_items(active, capacity)
    source = tf.gather(tf.constant([s for s, _ in off_diagonal], tf.int32), pair)
    target = tf.gather(tf.constant([t for _, t in off_diagonal], tf.int32), pair)

    # Input layers: every task's layer sees every slot (zeros where the slot's task differs)
    # and the slot keeps its own task's output; that is T first-layer convs per slot, cheap
    # next to the shared encoder, and it keeps shapes fixed.
    hidden = None
    item_task = tf.concat([source, target], axis=0)  # [2 * capacity]: sources, then targets
    for u, (name, kind) in enumerate(zip(names, kinds)):
        pred = tf.gather(tf.convert_to_tensor(preds[name]), image)
        if kind == "semantic":
            noise = gumbel_noise
            if noise is None:
                if seed is None:
                    raise ValueError("a semantic task needs a seed (or gumbel_noise) for the Gumbel sample")
                noise = ref.sample_gumbel(tf.shape(pred), tf.random.experimental.stateless_fold_in(seed, u))
            source_in = ref.preprocess_prediction(kind, pred, gumbel_noise=tf.cast(noise, pred.dtype))
        else:
            source_in = ref.preprocess_prediction(kind, pred)
        target_in = ref.preprocess_label(kind, tf.gather(labels[name], image),
                                         num_classes=mapping_net.task_channels[u], dtype=source_in.dtype)
        mine = tf.cast(tf.equal(item_task, u), source_in.dtype)[:, None, None, None]
        x = tf.concat([source_in, target_in], axis=0) * mine
        h = mapping_net.input_layers[u](x, training=training) * tf.cast(mine, mapping_net.compute_dtype)
        hidden = h if hidden is None else hidden + h
    embeddings = mapping_net.encode(hidden, tf.concat([pair, pair], axis=0), training)
    map_source, map_target = tf.split(embeddings, 2, axis=0)
    item_feat = tf.cast(tf.gather(feat, image), map_source.dtype)
    losses = tf.cast(ref.pair_loss(map_source, map_target, item_feat, reg_weight), tf.float32)
    losses = tf.where(valid > 0, losses, tf.zeros_like(losses))
    return tf.math.unsorted_segment_sum(losses, image, num_segments=tf.shape(feat)[0])
