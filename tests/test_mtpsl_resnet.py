"""MTPSL on PASCAL-Context: the ResNet-18 mapping encoder (resnet18_aspp), the five tasks'
mapping inputs and the compact consistency loss over their 20 ordered pairs."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.data.registry import DATASETS
from mtpsl_tf.methods.facts import MethodFacts
from mtpsl_tf.methods.mtpsl.compact import consistency_loss_compact
from mtpsl_tf.methods.mtpsl.encoders import MAPPING_ENCODERS
from mtpsl_tf.methods.mtpsl.mapping import MappingNet
from mtpsl_tf.methods.mtpsl.method import MTPSL, MTPSLOptions
from mtpsl_tf.methods.mtpsl.pairs import active_pairs, max_active_pairs, off_diagonal, pair_index
from mtpsl_tf.models.registry import BACKBONES

FILTERS = [4, 4, 8, 8, 8]
TASKS = DATASETS.get("pascal_context").tasks()
NAMES = [t.name for t in TASKS]
CHANNELS = [t.channels for t in TASKS]
# random-label style masks (1..4 labelled tasks); image 3 has human parts labelled but no person
MASK = np.array([[1, 0, 0, 0, 0], [1, 1, 0, 0, 1], [0, 1, 1, 1, 1], [0, 1, 0, 1, 0]], np.float32)


def pascal_net(dtype="float32", seed=0):
    net = MappingNet(NAMES, CHANNELS, filters=FILTERS, encoder_name="resnet18_aspp", dtype=dtype)
    rng = np.random.default_rng(seed)
    for v in net.film_variables:  # non-trivial, pair-dependent FiLM tables
        v.assign(v.numpy() + 0.3 * rng.standard_normal(v.shape))
    return net


def problem(seed=0, batch=4, hw=(16, 16), dtype=np.float64):
    """Predictions as the heads output them, labels with ignore pixels, a feature [B,4,4,8]."""
    rng = np.random.default_rng(seed)
    shape = (batch,) + hw

    def log_softmax(c):
        x = rng.normal(size=shape + (c,))
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    def unit(n):
        v = rng.normal(size=(n,) + hw + (3,))
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    def binary():
        label = rng.integers(0, 2, size=shape + (1,)).astype(dtype)
        label[:, :2] = -1.0  # an ignore band
        return label

    normals = unit(batch)
    normals[:, :3] = 0.0  # invalid band
    parts = rng.integers(-1, 7, size=shape)
    parts[3] = -1  # no person: all ignore
    preds = {"semseg": log_softmax(21), "human_parts": log_softmax(7), "normals": unit(batch),
             "sal": rng.normal(size=shape + (1,)), "edge": rng.normal(size=shape + (1,))}
    labels = {"semseg": rng.integers(-1, 21, size=shape), "human_parts": parts, "normals": normals,
              "sal": binary(), "edge": binary()}
    preds = {k: tf.constant(v, dtype) for k, v in preds.items()}
    feat = rng.normal(size=(batch, hw[0] // 8, hw[1] // 8, FILTERS[-1])).astype(dtype)
    return preds, labels, feat


# ----------------------------------------------------------------- numpy transcription

def np_source(name, pred):
    """Mapping input of a prediction (zero Gumbel noise: the argmax one-hot)."""
    if name in ("semseg", "human_parts"):
        return np.eye(pred.shape[-1])[pred.argmax(-1)]
    if name == "normals":
        return (pred + 1.0) / 2.0
    return 1.0 / (1.0 + np.exp(-pred))  # sal, edge: sigmoid of the logit


def np_target(name, label, channels):
    if name in ("semseg", "human_parts"):
        return np.eye(channels)[np.maximum(label, 0)] * (label >= 0)[..., None]
    if name == "normals":
        return (label + 1.0) / 2.0
    return np.where(label < 0, 0.0, label)


def np_annotated(name, label):
    if name == "normals":
        return bool(np.any(label != 0))
    return bool(np.any(label >= 0))


def np_cos_distance(a, b):
    norms = np.maximum(np.linalg.norm(a, axis=-1), 1e-12) * np.maximum(np.linalg.norm(b, axis=-1), 1e-12)
    cos = (a * b).sum(-1) / norms
    return 1.0 - cos.mean()


def looped_loss(net, preds, labels, feat, mask, mode, skip_unannotated=True):
    """One image, one active pair, one item at a time (the reference's structure)."""
    active = active_pairs(mask, mode).numpy()
    embed = tf.function(lambda x, u, s, t: net.embed(x, u, s, t, training=True), reduce_retracing=True)
    totals = []
    for n in range(len(mask)):
        total = 0.0
        for s, t in off_diagonal(len(NAMES)):
            if not active[n, s, t]:
                continue
            if skip_unannotated and not np_annotated(NAMES[t], labels[NAMES[t]][n]):
                continue
            x_s = np_source(NAMES[s], preds[NAMES[s]][n].numpy())[None]
            x_t = np_target(NAMES[t], labels[NAMES[t]][n], CHANNELS[t])[None]
            st = (tf.constant(s), tf.constant(t))  # tensors: one trace per input task
            e_s = embed(tf.constant(x_s, net.compute_dtype), s, *st).numpy()[0]
            e_t = embed(tf.constant(x_t, net.compute_dtype), t, *st).numpy()[0]
            total += np_cos_distance(e_s, e_t) + 0.5 * (np_cos_distance(e_s, feat[n]) + np_cos_distance(e_t, feat[n]))
        totals.append(total)
    return np.array(totals)


# ----------------------------------------------------------------- the encoder

def test_registered_for_resnet18_aspp_and_shaped_like_its_feature():
    assert "resnet18_aspp" in MAPPING_ENCODERS
    network = BACKBONES.get("resnet18_aspp")({t.name: t.head_spec for t in TASKS}, filters=FILTERS)
    net = MappingNet(NAMES, CHANNELS, filters=FILTERS, encoder_name="resnet18_aspp")
    for hw, u in (((32, 32), 0), ((37, 29), 4)):  # any size: ceil at each stride 2, as the backbone
        feature = network(tf.zeros((1,) + hw + (3,)))["feature"]
        embedding = net.embed(tf.zeros((2,) + hw + (CHANNELS[u],)), u, u, (u + 1) % 5, training=True)
        assert embedding.shape == (2,) + tuple(feature.shape[1:])


def test_input_layers_film_tables_and_variable_groups():
    net = MappingNet(NAMES, CHANNELS, filters=FILTERS, encoder_name="resnet18_aspp")
    # one input layer per task: the stem conv 7x7/2 from the task's channels, no FiLM
    assert [layer.conv.kernel.shape for layer in net.input_layers] == [(7, 7, c, 4) for c in CHANNELS]
    assert all(layer.conv.strides == (2, 2) for layer in net.input_layers)
    # two FiLM tables [C, 20] per residual block (8 blocks), gamma 1 / beta 0
    film = net.film_variables
    assert len(film) == 2 * 2 * 8
    assert sorted({tuple(v.shape) for v in film}) == [(4, 20), (8, 20)]
    for gamma, beta in zip(film[::2], film[1::2]):
        np.testing.assert_array_equal(gamma.numpy(), 1.0)
        np.testing.assert_array_equal(beta.numpy(), 0.0)
    assert not {id(v) for v in film} & {id(v) for v in net.non_film_trainable_variables}
    assert len(film) + len(net.non_film_trainable_variables) == len(net.trainable_variables)
    with pytest.raises(ValueError, match="5 positive widths"):
        MappingNet(NAMES, CHANNELS, filters=[4, 4, 8], encoder_name="resnet18_aspp")


def test_film_column_changes_only_its_pair():
    net = pascal_net()
    x = tf.random.stateless_uniform([1, 32, 32, 1], [1, 2])
    before = [net.embed(x, 3, 3, t, training=True).numpy() for t in (0, 1)]
    k = pair_index(3, 0, 5)
    block = net.encoder.blocks[-1]
    block.film2.beta.assign(tf.tensor_scatter_nd_add(block.film2.beta, [[0, k]], [5.0]))
    after = [net.embed(x, 3, 3, t, training=True).numpy() for t in (0, 1)]
    assert np.abs(after[0] - before[0]).max() > 1e-3
    np.testing.assert_array_equal(after[1], before[1])


def test_batched_items_equal_one_item_at_a_time():
    """Per-item BatchNorm statistics: embedding items together or alone gives the same."""
    net = pascal_net("float64")
    rng = np.random.default_rng(1)
    inputs = [tf.constant(rng.uniform(size=(n, 32, 32, c))) for n, c in zip((2, 1, 0, 1, 2), CHANNELS)]
    inputs[2] = None
    pairs = [tf.constant([1, 2]), tf.constant([7]), None, tf.constant([13]), tf.constant([16, 19])]
    together = net.embed_items(inputs, pairs, training=True)
    for u, (x, idx) in enumerate(zip(inputs, pairs)):
        if x is None:
            assert together[u] is None
            continue
        for i in range(x.shape[0]):
            h = net.input_layers[u](x[i:i + 1], training=True)
            alone = net.encode(h, idx[i:i + 1], True)
            np.testing.assert_allclose(together[u][i:i + 1].numpy(), alone.numpy(), rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------- consistency over 20 pairs

def test_compact_loss_equals_per_item_loop():
    """Ours+ (every source kind against every target kind; image 3's human-parts targets, all
    ignore, are left out), and Ours with and without those targets."""
    net = pascal_net("float64")
    preds, labels, feat = problem()

    def compact(mode, **kw):
        capacity = len(MASK) * max_active_pairs(5, mode, [1, 2, 3, 4])
        return consistency_loss_compact(net, preds, labels, feat, MASK, mode, capacity=capacity,
                                        gumbel_noise=tf.zeros([capacity, 1, 1, 1], tf.float64), tasks=TASKS,
                                        **kw).numpy()

    np.testing.assert_allclose(compact("mtpsl_plus"), looped_loss(net, preds, labels, feat, MASK, "mtpsl_plus"),
                               rtol=1e-6)
    got, keep = compact("mtpsl"), compact("mtpsl", skip_unannotated=False)
    assert keep[3] > got[3] > 0 and np.allclose(keep[:3], got[:3])


def test_label_annotated_hooks():
    _, labels, _ = problem()
    got = {t.name: t.label_annotated(tf.constant(labels[t.name])).numpy().tolist() for t in TASKS}
    assert got["human_parts"] == [True, True, True, False]
    assert all(all(v) for k, v in got.items() if k != "human_parts")
    assert TASKS[2].label_annotated(tf.zeros([2, 4, 4, 3])).numpy().tolist() == [False, False]
    assert TASKS[3].label_annotated(-tf.ones([1, 4, 4, 1])).numpy().tolist() == [False]


def test_capacity_is_derived_from_the_label_setting():
    def method(counts, mode="auto"):
        facts = MethodFacts(tasks=tuple(TASKS), backbone="resnet18_aspp", labelled_counts=counts,
                            setting_kind="randomlabels", options=MTPSLOptions(consistency_mode=mode))
        return MTPSL(facts)
    assert method((1,)).capacity(6) == 6 * 4  # one-label: 1 x 4 pairs per image
    assert method((1, 2, 3, 4)).capacity(6) == 6 * 6  # random-label 1..4: max k(5-k) = 6
    assert method((1, 2, 3, 4), "mtpsl_plus").capacity(6) == 6 * 16  # Ours+: 4 x 4
    with pytest.raises(ValueError, match="--backbone=vgg.*no mapping encoder"):
        MTPSL(dataclasses.replace(method((1,)).facts, backbone="vgg"))


def test_recomputed_encoder_gives_the_same_loss_and_gradients():
    net = pascal_net()
    preds, labels, feat = problem(seed=2, dtype=np.float32)
    capacity = len(MASK) * 6
    results = []
    for recompute in (False, True):
        with tf.GradientTape() as tape:
            tape.watch(preds["normals"])
            loss = tf.reduce_sum(consistency_loss_compact(
                net, preds, labels, feat, MASK, "mtpsl", capacity=capacity, seed=tf.constant([3, 4], tf.int64),
                tasks=TASKS, recompute=recompute))
        grads = tape.gradient(loss, net.trainable_variables + [preds["normals"]])
        results.append((float(loss), [tf.convert_to_tensor(g).numpy() for g in grads]))
    (plain, plain_grads), (again, again_grads) = results
    assert plain > 0 and again == pytest.approx(plain, rel=1e-6)
    for a, b in zip(again_grads, plain_grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(np.abs(b).max(), 1e-12))
