"""InfoNCE in the joint pairwise task space, pure functions of tensors.

For anchor n (the pooled embedding of image i's prediction of s under pair (s, t)) the
candidates are pooled label embeddings; its positive is the same item's label of t, its
negatives the allowed candidates of OTHER images (`negatives_mask`):
    L_n = -log( exp(cos(a_n, c_pos(n)) / tau) / sum_{m allowed} exp(cos(a_n, c_m) / tau) ).
"""

from __future__ import annotations

import tensorflow as tf

POOLINGS = ("mean", "flatten")
# Logit of a disallowed candidate: exp() of it underflows to 0 in float32, and unlike -inf it
# keeps a row finite whatever is masked.
_MASKED_LOGIT = -1e9


def pool_embeddings(x, pooling: str) -> tf.Tensor:
    """float32 `[N, D]` from embeddings `[N, h, w, C]`: "mean" over positions (D = C) or
    "flatten" (D = h*w*C, keeps the spatial layout)."""
    x = tf.cast(x, tf.float32)
    if pooling == "mean":
        return tf.reduce_mean(x, axis=[1, 2])
    if pooling == "flatten":
        return tf.reshape(x, [tf.shape(x)[0], -1])
    raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")


def negatives_mask(anchor_image, anchor_pair, cand_image, cand_pair, cand_valid, positive,
                   same_pair: bool) -> tf.Tensor:
    """bool `[N, M]`: candidate m enters anchor n's softmax.

    Args:
        anchor_image / anchor_pair: int `[N]`; cand_image / cand_pair: int `[M]`, images
            numbered over the global batch.
        cand_valid: float `[M]`, 1 for real (not padding) candidates.
        positive: int `[N]`, each anchor's positive candidate (always allowed).
        same_pair: negatives must share the anchor's pair (the joint space is per pair).
    Negatives are valid candidates of another image (the anchor's own image never is).
    """
    allowed = tf.not_equal(anchor_image[:, None], cand_image[None, :]) & (cand_valid[None, :] > 0)
    if same_pair:
        allowed &= tf.equal(anchor_pair[:, None], cand_pair[None, :])
    return allowed | tf.cast(tf.one_hot(positive, tf.shape(cand_image)[0], dtype=tf.int32), tf.bool)


def info_nce(anchors, candidates, positive, allowed, temperature: float) -> tf.Tensor:
    """float32 `[N]`: InfoNCE with cosine similarity / temperature.

    Args:
        anchors: `[N, D]`; candidates: `[M, D]`; positive: int `[N]` (index into candidates);
        allowed: bool `[N, M]` (must include the positives); temperature: > 0.
    """
    a = tf.math.l2_normalize(tf.cast(anchors, tf.float32), axis=-1)
    c = tf.math.l2_normalize(tf.cast(candidates, tf.float32), axis=-1)
    logits = tf.matmul(a, c, transpose_b=True) / temperature
    logits = tf.where(allowed, logits, tf.fill(tf.shape(logits), _MASKED_LOGIT))
    positive_logit = tf.gather(logits, tf.cast(positive, tf.int32), axis=1, batch_dims=1)
    return tf.reduce_logsumexp(logits, axis=1) - positive_logit
