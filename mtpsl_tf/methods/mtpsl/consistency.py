"""The MTPSL pair loss (SPEC section 5), pure functions of tensors.

For image n and an active ordered pair (s, t), s != t:
    e_s = m(prep_pred_s(yhat_s); s, (s, t)),   e_t = m(prep_label_t(y_t); t, (s, t)),
    L(s, t) = [1 - cos(e_s, e_t)] + reg_weight * ([1 - cos(e_s, sg(f))] + [1 - cos(e_t, sg(f))])
with cos over channels averaged over positions and f the image's shared backbone feature. The
preprocessing `prep_*` is each Task's `mapping_prediction` / `mapping_label`.
"""

from __future__ import annotations

import tensorflow as tf

# F.cosine_similarity's eps as the reference calls it.
_COS_EPS = 1e-12


def cosine_similarity(x, y, eps: float = _COS_EPS) -> tf.Tensor:
    """Cosine similarity over the last axis, `[..., C] x [..., C] -> [...]`.

    As PyTorch (>= 1.12) `F.cosine_similarity`: sum((x / max(||x||, eps)) * (y / max(||y||, eps))).
    The norm is sqrt(max(sum x^2, eps^2)), equal in value and finite in gradient at x = 0.
    """
    x_norm = tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(x), axis=-1, keepdims=True), eps * eps))
    y_norm = tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(y), axis=-1, keepdims=True), eps * eps))
    return tf.reduce_sum((x / x_norm) * (y / y_norm), axis=-1)


def _cosine_distance(x, y) -> tf.Tensor:
    """`1 - mean over positions of cos`: `[N,h,w,C] x [N,h,w,C] -> [N]`."""
    return 1.0 - tf.reduce_mean(cosine_similarity(x, y), axis=[1, 2])


def pair_loss(map_source, map_target, feat, reg_weight: float = 0.5) -> tf.Tensor:
    """Per-item pair loss `[N]` from embeddings `[N,h,w,C]` and the image feature `[N,h,w,C]`.

    `[1 - cos(e_s, e_t)] + reg_weight * ([1 - cos(e_s, sg(f))] + [1 - cos(e_t, sg(f))])`; the
    feature is the only stop-gradient.
    """
    loss = _cosine_distance(map_source, map_target)
    if reg_weight > 0:
        loss += reg_weight * feature_regulariser(map_source, map_target, feat)
    return loss


def feature_regulariser(map_source, map_target, feat) -> tf.Tensor:
    """`[1 - cos(e_s, sg(f))] + [1 - cos(e_t, sg(f))]`, `[N]`, from `[N,h,w,C]` tensors: keeps
    the joint space tied to the image (the paper's guard against a trivial mapping)."""
    feat = tf.stop_gradient(feat)
    return _cosine_distance(map_source, feat) + _cosine_distance(map_target, feat)
