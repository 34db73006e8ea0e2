"""The consistency loss computed on the ACTIVE (image, pair) items only, with fixed shapes.

Embedding every (image, ordered pair) item and masking the inactive ones (the all-items
oracle in tests/consistency_oracle.py) does 3x the reference's mapping-net work in the
one-label setting on NYU-v2, where only 2 of the 6 pairs of an image are active. Here the
active items are gathered into a fixed number of slots, `capacity` (an upper bound on active
items per batch that the method derives from the mode and the label setting), so the mapping
net runs exactly as many embeddings as the reference (when the bound is tight), the step
still traces once and compiles under XLA, and unused slots are masked out.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import tensorflow as tf

from mtpsl_tf.methods.mtpsl.consistency import pair_loss
from mtpsl_tf.methods.mtpsl.mapping import MappingNet
from mtpsl_tf.methods.mtpsl.pairs import active_pair_items, off_diagonal, stack_label_mask
from mtpsl_tf.tasks.registry import resolve_tasks


def _select_items(active: tf.Tensor, capacity: int):
    """Slots for the active items of `active` `[B, P]`: (image, pair, valid), each `[capacity]`.

    Active items come first (stable order: image-major, then pair index); remaining slots
    repeat inactive items and are marked invalid.
    """
    pairs = active.shape[1]
    flat = tf.reshape(active, [-1])
    order = tf.argsort(-flat, stable=True)[:capacity]
    return order // pairs, order % pairs, tf.gather(flat, order)


def _mapping_inputs(task, position, pred, label, channels, gumbel_noise, seed):
    """(source input from the prediction, target input from the label) of one task."""
    noise, task_seed = None, None
    if task.mapping_needs_noise:
        noise = gumbel_noise
        if noise is None:
            if seed is None:
                raise ValueError(f"task {position} needs a seed (or gumbel_noise) for its mapping noise")
            task_seed = tf.random.experimental.stateless_fold_in(seed, position)
    source_in = task.mapping_prediction(pred, noise=noise, seed=task_seed)
    return source_in, task.mapping_label(label, channels, dtype=source_in.dtype)


@dataclasses.dataclass(frozen=True)
class ActiveItems:
    """The embedded active (image, pair) items of a batch, `capacity` slots each.

    Attributes:
        source: float `[K, h, w, C]`, e_s = m(prediction of s; s, (s, t)).
        target: float `[K, h, w, C]`, e_t = m(label of t; t, (s, t)).
        feature: float `[K, h, w, C]`, the slot's image feature (NOT stop-gradient'ed here).
        image: int32 `[K]`, the slot's image in the (local) batch.
        pair: int32 `[K]`, the slot's ordered-pair index.
        valid: float `[K]`, 1 for active items, 0 for padding slots.
    """

    source: tf.Tensor
    target: tf.Tensor
    feature: tf.Tensor
    image: tf.Tensor
    pair: tf.Tensor
    valid: tf.Tensor


@dataclasses.dataclass(frozen=True)
class SlotInputs:
    """The mapping-net inputs of the `capacity` slots, before the net (`slot_inputs`).

    Attributes:
        inputs: per task (mapping-net order) float `[2K, H, W, C_t]`: rows `0..K-1` the slots'
            source inputs (from the prediction), rows `K..2K-1` their target inputs (from the
            label); a slot's row is its own task's input in the tensor of its task (each input
            layer masks the rows of other tasks).
        item_task: int32 `[2K]`, the task of each row (sources, then targets).
        item_pair: int32 `[2K]`, the ordered-pair index of each row.
        image, pair, valid: as `ActiveItems`.
    """

    inputs: list
    item_task: tf.Tensor
    item_pair: tf.Tensor
    image: tf.Tensor
    pair: tf.Tensor
    valid: tf.Tensor


def slot_inputs(mapping_net, preds, labels, label_mask, mode, capacity, seed=None, gumbel_noise=None, tasks=None,
                skip_unannotated=True) -> SlotInputs:
    """Selects the active items into `capacity` slots and builds their mapping-net inputs; the
    arguments are those of `consistency_loss_compact`."""
    names = list(mapping_net.task_names)
    kinds = resolve_tasks(names, tasks)
    active = active_pair_items(stack_label_mask(label_mask, names), mode)  # [B, P]
    pairs = off_diagonal(len(names))
    if skip_unannotated:
        annotated = tf.stack([tf.cast(kinds[n].label_annotated(labels[n]), tf.float32) for n in names], axis=1)
        active = active * tf.gather(annotated, [t for _, t in pairs], axis=1)
    image, pair, valid = _select_items(active, capacity)
    source = tf.gather(tf.constant([s for s, _ in pairs], tf.int32), pair)
    target = tf.gather(tf.constant([t for _, t in pairs], tf.int32), pair)
    inputs = []
    for u, name in enumerate(names):
        pred = tf.gather(tf.convert_to_tensor(preds[name]), image)
        source_in, target_in = _mapping_inputs(kinds[name], u, pred, tf.gather(labels[name], image),
                                               mapping_net.task_channels[u], gumbel_noise, seed)
        inputs.append(tf.concat([source_in, target_in], axis=0))
    return SlotInputs(inputs, tf.concat([source, target], axis=0), tf.concat([pair, pair], axis=0),
                      tf.cast(image, tf.int32), tf.cast(pair, tf.int32), valid)


def embed_rows(mapping_net: MappingNet, inputs, item_task, item_pair, training: bool = True,
               recompute: bool = False) -> tf.Tensor:
    """Embeds rows of `SlotInputs` (any subset of them): per-task inputs `[N, H, W, C_t]`,
    int32 `item_task` / `item_pair` `[N]` -> float `[N, h, w, C]`.

    Input layers: every task's layer sees every row (zeros where the row's task differs) and
    the row keeps its own task's output; that is T first-layer convs per row, cheap next to
    the shared encoder, and it keeps shapes fixed. Under `recompute` each task's input layer
    is a segment of its own that also adds the previous tasks' sum: the backward pass then
    recomputes them one after the other (each waits for the next one's input gradient), so
    one task's full-resolution maps are alive at a time, not all T.
    """
    hidden = None
    for u, x in enumerate(inputs):
        mine = tf.cast(tf.equal(item_task, u), x.dtype)[:, None, None, None]

        def input_layer(x, *before, u=u, mine=mine):
            h = mapping_net.input_layers[u](x * mine, training=training) * tf.cast(mine, mapping_net.compute_dtype)
            return h + before[0] if before else h

        hidden = mapping_net.encoder.segment(input_layer, x, recompute, *([] if hidden is None else [hidden]))
    return mapping_net.encode(hidden, item_pair, training, remat=recompute)


def embed_active_items(
    mapping_net: MappingNet,
    preds: Mapping[str, tf.Tensor],
    labels: Mapping[str, tf.Tensor],
    feat,
    label_mask,
    mode: str,
    capacity: int,
    seed=None,
    gumbel_noise=None,
    training: bool = True,
    tasks=None,
    recompute: bool = False,
    skip_unannotated: bool = True,
) -> ActiveItems:
    """Embeds the active items of `mode` in ONE batched mapping-net call (see the module
    docstring); the arguments are those of `consistency_loss_compact`."""
    feat = tf.convert_to_tensor(feat)
    slots = slot_inputs(mapping_net, preds, labels, label_mask, mode, capacity, seed=seed, gumbel_noise=gumbel_noise,
                        tasks=tasks, skip_unannotated=skip_unannotated)
    embeddings = embed_rows(mapping_net, slots.inputs, slots.item_task, slots.item_pair, training, recompute)
    map_source, map_target = tf.split(embeddings, 2, axis=0)
    item_feat = tf.cast(tf.gather(feat, slots.image), map_source.dtype)
    return ActiveItems(map_source, map_target, item_feat, slots.image, slots.pair, slots.valid)


def per_image_sum(item_losses, items: ActiveItems, batch_size) -> tf.Tensor:
    """float `[B]`: the valid slots' losses `[K]` summed per image."""
    losses = tf.cast(item_losses, tf.float32)
    losses = tf.where(items.valid > 0, losses, tf.zeros_like(losses))
    return tf.math.unsorted_segment_sum(losses, items.image, num_segments=batch_size)


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
    tasks=None,
    recompute: bool = False,
    skip_unannotated: bool = True,
) -> tf.Tensor:
    """Per-image sum of the active pairs' losses, float `[B]`.

    Args:
        mapping_net: the joint pairwise mapping net; its `task_names` fix the task order.
        preds / labels: task -> prediction / label of the view the consistency uses.
        feat: the backbone's shared feature `[B, h, w, C]` (stop-gradient inside).
        label_mask: `[B, T]` or a dict task -> `[B]`, 1 = labelled.
        mode: "mtpsl", "mtpsl_plus" or "full" (see `pairs.active_pairs`).
        capacity: static number of item slots (e.g. B * max_active_pairs(...)).
        seed: int `[2]` stateless seed of the sampled mapping inputs (Gumbel; one sample per slot).
        gumbel_noise: alternatively explicit noise `[capacity, H, W, C]` (tests use zeros).
        reg_weight: weight of the feature regulariser.
        training: BatchNorm mode of the mapping net (the method uses True: per-item statistics).
        tasks: the Tasks of `mapping_net.task_names` (their `mapping_prediction` /
            `mapping_label` hooks); default the tasks registered under those names.
        recompute: keep only the inputs of the mapping net's input layers and FiLM blocks for
            the backward pass and recompute their activations there (`models.remat`): less
            memory, one more mapping-net forward pass.
        skip_unannotated: leave out pairs whose target label has no valid pixel (the task's
            `label_annotated`; e.g. PASCAL human parts of an image without people, all ignore),
            whose all-zero mapping input says nothing about the image.
    """
    feat = tf.convert_to_tensor(feat)
    items = embed_active_items(mapping_net, preds, labels, feat, label_mask, mode, capacity, seed=seed,
                               gumbel_noise=gumbel_noise, training=training, tasks=tasks, recompute=recompute,
                               skip_unannotated=skip_unannotated)
    losses = pair_loss(items.source, items.target, items.feature, reg_weight)
    return per_image_sum(losses, items, tf.shape(feat)[0])
