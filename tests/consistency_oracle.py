"""Test oracle: the MTPSL consistency loss over ALL (image, pair) items, shaped like the
reference (SPEC section 5), with the reference's own preprocessing by task kind.

The training path (mtpsl_tf/methods/mtpsl/compact.py) must give the same values; this
module is independent of the Task hooks it uses, so the equality tests check them too.
Pure functions of tensors. For image n and an active ordered pair (s, t), s != t:
    e_s = m(prep_pred_s(yhat_s); s, (s, t)),   e_t = m(prep_label_t(y_t); t, (s, t)),
    L(s, t) = [1 - cos(e_s, e_t)] + reg_weight * ([1 - cos(e_s, sg(f))] + [1 - cos(e_t, sg(f))])
with cos over channels averaged over positions and f the image's shared encoder feature.
Per image, the losses of its active pairs are SUMMED.

Tensors are NHWC; `T` is the number of tasks (the mapping net's task order), `P = T(T-1)`.
"""

from __future__ import annotations

from typing import Mapping

import tensorflow as tf

from mtpsl_tf.methods.mtpsl.consistency import cosine_similarity, pair_loss  # noqa: F401
from mtpsl_tf.methods.mtpsl.mapping import MappingNet, num_pairs, pair_index
from mtpsl_tf.methods.mtpsl.pairs import MODES, active_pairs  # noqa: F401
from mtpsl_tf.methods.mtpsl.pairs import stack_label_mask as _stack_label_mask
from mtpsl_tf.tasks.depth import normalise_by_image_max
from mtpsl_tf.tasks.semantic import gumbel_softmax_hard, sample_gumbel  # noqa: F401

# The reference's three kinds of task (the authors' code has no other).
TASK_KINDS = ("semantic", "depth", "normal")


def _check_kind(task_kind: str) -> None:
    if task_kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {task_kind!r}; expected one of {TASK_KINDS}")


def preprocess_prediction(task_kind: str, pred, gumbel_noise=None, seed=None) -> tf.Tensor:
    """A task prediction -> the mapping net's input for that task.

    Args:
        task_kind: "semantic" (pred = log-probabilities `[B,H,W,C]`), "depth" (`[B,H,W,1]`) or
            "normal" (`[B,H,W,3]` unit vectors).
        gumbel_noise: semantic only, float broadcastable to `pred` (zeros give the deterministic
            one-hot of the argmax used by the parity fixtures).
        seed: semantic only, int `[2]` stateless seed, used when `gumbel_noise` is None.
    Returns:
        semantic: hard Gumbel-softmax sample (tau 1, straight-through); depth: per-image
        max-normalised; normals: (n + 1) / 2. Same shape as `pred`.
    """
    _check_kind(task_kind)
    pred = tf.convert_to_tensor(pred)
    if task_kind == "semantic":
        if gumbel_noise is None:
            if seed is None:
                raise ValueError("semantic preprocessing needs gumbel_noise or a seed")
            gumbel_noise = sample_gumbel(tf.shape(pred), seed)
        return gumbel_softmax_hard(pred, tf.cast(gumbel_noise, pred.dtype), tau=1.0)
    if task_kind == "depth":
        return normalise_by_image_max(pred)
    return (pred + 1.0) / 2.0


def preprocess_label(
    task_kind: str, label, num_classes: int | None = None, dtype=tf.float32
) -> tf.Tensor:
    """A task label -> the mapping net's input for that task.

    semantic: int `[B,H,W]` (-1 = ignore) -> float one-hot `[B,H,W,num_classes]`, ignore pixels
    all-zero; depth `[B,H,W,1]` -> per-image max-normalised; normals `[B,H,W,3]` -> (n + 1) / 2.
    """
    _check_kind(task_kind)
    label = tf.convert_to_tensor(label)
    if task_kind == "semantic":
        if num_classes is None:
            raise ValueError("semantic label preprocessing needs num_classes")
        label = tf.cast(label, tf.int32)
        valid = label >= 0
        one_hot = tf.one_hot(tf.where(valid, label, 0), num_classes, dtype=dtype)
        return one_hot * tf.cast(valid, dtype)[..., None]
    label = tf.cast(label, dtype)
    if task_kind == "depth":
        return normalise_by_image_max(label)
    return (label + 1.0) / 2.0


# --------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------
def _pair_layout(num_tasks: int):
    """Static item layout of the vectorised loss.

    Input-task u contributes 2(T-1) item columns per image: first as SOURCE of (u, t) for the
    targets t != u in increasing order, then as TARGET of (s, u) for the sources s != u.
    Returns:
        pair_of_source[u]: `[T-1]` pair indices of u's source columns;
        pair_of_target[u]: `[T-1]` pair indices of u's target columns;
        target_perm: `[P]` for pair k, the position of its target item in the concatenation
            over u of u's target columns (the source items concatenate in pair order already).
    """
    tasks = range(num_tasks)
    pair_of_source = [[pair_index(u, t, num_tasks) for t in tasks if t != u] for u in tasks]
    pair_of_target = [[pair_index(s, u, num_tasks) for s in tasks if s != u] for u in tasks]
    flat_targets = [k for column in pair_of_target for k in column]
    target_perm = [flat_targets.index(k) for k in range(num_pairs(num_tasks))]
    return pair_of_source, pair_of_target, target_perm


def _tile_items(x, copies: int) -> tf.Tensor:
    """`[B, ...]` -> `[B * copies, ...]`, image-major (item b*copies + j is image b)."""
    tiled = tf.repeat(x[:, None], copies, axis=1)
    return tf.reshape(tiled, tf.concat([[-1], tf.shape(x)[1:]], axis=0))


def _merge_items(x) -> tf.Tensor:
    """`[B, P, ...]` -> `[B * P, ...]`."""
    return tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], axis=0))


def _task_kinds(task_names, task_kinds):
    kinds = [(task_kinds or {}).get(name, name) for name in task_names]
    for name, kind in zip(task_names, kinds):
        if kind not in TASK_KINDS:
            raise ValueError(
                f"task {name!r} has no consistency preprocessing (kind {kind!r}); expected a kind "
                f"in {TASK_KINDS}, pass task_kinds={{name: kind}}"
            )
    return kinds


def _source_noise(gumbel_noise, seed, pred, copies: int, task_position: int):
    """Gumbel noise for the tiled semantic source items, `[B*copies, H, W, C]`.

    One independent sample per (image, pair) item, as the reference draws afresh per pair.
    `gumbel_noise` may be `[B,H,W,C]` (shared by the pairs) or `[B, copies, H, W, C]`. A seed
    is folded with the task position so that two categorical tasks would draw different noise.
    """
    if gumbel_noise is None:
        if seed is None:
            raise ValueError("a semantic task needs gumbel_noise or a seed for the Gumbel sample")
        shape = tf.concat([[tf.shape(pred)[0] * copies], tf.shape(pred)[1:]], axis=0)
        task_seed = tf.random.experimental.stateless_fold_in(seed, task_position, alg="philox")
        return tf.cast(sample_gumbel(shape, task_seed), pred.dtype)
    gumbel_noise = tf.convert_to_tensor(gumbel_noise, dtype=pred.dtype)
    if gumbel_noise.shape.rank == pred.shape.rank:
        return _tile_items(gumbel_noise, copies)
    if gumbel_noise.shape.rank == pred.shape.rank + 1:
        return tf.reshape(gumbel_noise, tf.concat([[-1], tf.shape(pred)[1:]], axis=0))
    raise ValueError(
        f"gumbel_noise must be [B,H,W,C] or [B,{copies},H,W,C], got shape {gumbel_noise.shape}"
    )


def consistency_loss(
    mapping_net: MappingNet,
    preds: Mapping[str, tf.Tensor],
    labels: Mapping[str, tf.Tensor],
    feat,
    label_mask,
    mode: str,
    num_classes: int | None = None,
    gumbel_noise=None,
    seed=None,
    reg_weight: float = 0.5,
    training: bool = True,
    task_kinds: Mapping[str, str] | None = None,
) -> tf.Tensor:
    """Per-image sum of the pair losses over the active pairs, float `[B]`.

    Args:
        mapping_net: the joint pairwise mapping net; its `task_names` fix the task order.
        preds: task -> prediction (semantic log-probabilities `[B,H,W,C]`, depth `[B,H,W,1]`,
            normals `[B,H,W,3]`), of the view the consistency is computed on.
        labels: task -> label of the same view (semantic int `[B,H,W]`, -1 ignore; depth;
            normals).
        feat: the shared encoder feature `[B, h, w, f4]` (stop-gradient inside).
        label_mask: `[B, T]` or a dict task -> `[B]`, 1 = labelled.
        mode: "mtpsl", "mtpsl_plus" or "full" (see `active_pairs`).
        num_classes: optional check of the semantic one-hot size (the net's input channels).
        gumbel_noise / seed: the semantic Gumbel noise (`[B,H,W,C]` or `[B,T-1,H,W,C]`), or an
            int `[2]` stateless seed to sample it.
        reg_weight: weight of the feature regulariser.
        training: BatchNorm mode of the mapping net (the method uses True: per-item statistics).
        task_kinds: task -> preprocessing kind, for tasks not named after a kind.

    Every (image, ordered pair) item is embedded: B*2P embeddings at full resolution in ONE
    encoder pass, whatever the labels, so that shapes are fixed and the step traces/compiles once.
    The price is FLOPs: with one label per image (T=3) only 2 of the 6 pairs are active, so about
    3x the reference's mapping-net work (and activation memory). Inactive items are masked out
    (exactly 0 loss, 0 gradient).
    """
    names = list(mapping_net.task_names)
    num_tasks = len(names)
    kinds = _task_kinds(names, task_kinds)
    for name in names:
        if name not in preds or name not in labels:
            raise KeyError(
                f"consistency needs predictions and labels of every task {names}; got preds "
                f"{list(preds)}, labels {list(labels)}"
            )
    copies = num_tasks - 1
    pair_of_source, pair_of_target, target_perm = _pair_layout(num_tasks)

    inputs, indices = [], []
    for u, (name, kind) in enumerate(zip(names, kinds)):
        pred = tf.convert_to_tensor(preds[name])
        channels = mapping_net.task_channels[u]
        if kind == "semantic" and num_classes is not None and num_classes != channels:
            raise ValueError(
                f"num_classes={num_classes} but the mapping net's {name!r} input has {channels}"
            )
        # Source items of u: its prediction, once per target t != u (image-major).
        source_pred = _tile_items(pred, copies)
        if kind == "semantic":
            noise = _source_noise(gumbel_noise, seed, pred, copies, task_position=u)
            source_in = preprocess_prediction(kind, source_pred, gumbel_noise=noise)
        else:
            source_in = preprocess_prediction(kind, source_pred)
        # Target items of u: its label, once per source s != u.
        target_in = _tile_items(
            preprocess_label(kind, labels[name], num_classes=channels, dtype=pred.dtype), copies
        )
        batch = tf.shape(pred)[0]
        inputs.append(tf.concat([source_in, target_in], axis=0))
        indices.append(
            tf.concat(
                [
                    tf.tile(tf.constant(pair_of_source[u], tf.int32), [batch]),
                    tf.tile(tf.constant(pair_of_target[u], tf.int32), [batch]),
                ],
                axis=0,
            )
        )

    embeddings = mapping_net.embed_items(inputs, indices, training=training)
    # Split each task's block back into source / target items, as [B, T-1, h, w, C].
    sources, targets = [], []
    for emb in embeddings:
        shape = tf.shape(emb)
        per_image = tf.reshape(emb, tf.concat([[2, -1, copies], shape[1:]], axis=0))
        sources.append(per_image[0])
        targets.append(per_image[1])
    map_source = tf.concat(sources, axis=1)  # [B, P, ...] in pair order already
    map_target = tf.gather(tf.concat(targets, axis=1), target_perm, axis=1)

    feat = tf.cast(feat, map_source.dtype)
    pairs = num_pairs(num_tasks)
    losses = pair_loss(
        _merge_items(map_source), _merge_items(map_target), _tile_items(feat, pairs), reg_weight
    )
    losses = tf.reshape(losses, [-1, pairs])  # [B, P]

    active = active_pairs(_stack_label_mask(label_mask, names), mode)  # [B, T, T]
    off_diagonal = [(s, t) for s in range(num_tasks) for t in range(num_tasks) if s != t]
    rows = tf.constant([s * num_tasks + t for s, t in off_diagonal], tf.int32)
    active = tf.gather(tf.reshape(active, [-1, num_tasks * num_tasks]), rows, axis=1)  # [B, P]
    active = tf.cast(active, losses.dtype)
    # `where` keeps inactive items at exactly 0 even if their (unused) loss were not finite.
    return tf.reduce_sum(tf.where(active > 0, losses * active, tf.zeros_like(losses)), axis=1)
