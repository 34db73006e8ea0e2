"""The method: compact consistency loss (parity, equivalence), capacity bounds, training."""

import json

import numpy as np
import pytest
import tensorflow as tf

import consistency_oracle as ref
from mtpsl_tf.methods.mtpsl.compact import consistency_loss_compact
from mtpsl_tf.methods.mtpsl.pairs import max_active_pairs
from mtpsl_tf.methods.mtpsl.mapping import MappingNet, load_torch_state

TASKS = ["semantic", "depth", "normal"]


@pytest.fixture(scope="module")
def fixture_net(parity_weights):
    net = MappingNet(TASKS, [13, 1, 3], filters=[8, 16, 32, 64, 64])
    load_torch_state(net, {k: v for k, v in parity_weights.items() if k.startswith("mapfns/")})
    return net


def _fixture_inputs(parity):
    preds = {"semantic": tf.constant(parity["eval_semantic_logprob"]), "depth": tf.constant(parity["eval_depth"]),
             "normal": tf.constant(parity["eval_normal"])}
    labels = {"semantic": tf.constant(parity["seg_label"], tf.int32), "depth": tf.constant(parity["depth_label"]),
              "normal": tf.constant(parity["normal_label"])}
    return preds, labels, tf.constant(parity["eval_feat"])


def test_compact_full_mode_reproduces_reference_total(parity, fixture_net):
    """All 6 ordered pairs of both items; zero Gumbel noise = the fixture's argmax one-hot."""
    preds, labels, feat = _fixture_inputs(parity)
    capacity = 2 * 6
    zeros = tf.zeros([capacity, 64, 96, 13])
    per_image = consistency_loss_compact(fixture_net, preds, labels, feat, tf.ones([2, 3]), "full",
                                         capacity=capacity, gumbel_noise=zeros)
    assert abs(float(tf.reduce_sum(per_image)) - float(parity["con_loss_total"])) < 1e-4
    for n in range(2):
        expected = sum(float(parity[f"pair_{n}_{s}_{t}/loss"]) for s in range(3) for t in range(3) if s != t)
        assert abs(float(per_image[n]) - expected) < 1e-4


@pytest.mark.parametrize("mode", ["mtpsl", "mtpsl_plus", "full"])
def test_compact_equals_all_items_version(parity, fixture_net, mode):
    """Same loss and gradients as embedding every item and masking (for random masks)."""
    preds, labels, feat = _fixture_inputs(parity)
    masks = [tf.constant([[1.0, 0, 0], [0, 1, 1]]), tf.constant([[0.0, 1, 0], [1, 1, 1]])]
    for mask in masks:
        capacity = 2 * max_active_pairs(3, mode)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(list(preds.values()))
            compact = consistency_loss_compact(fixture_net, preds, labels, feat, mask, mode, capacity=capacity,
                                               gumbel_noise=tf.zeros([capacity, 64, 96, 13]))
            full = ref.consistency_loss(fixture_net, preds, labels, feat, mask, mode,
                                        gumbel_noise=tf.zeros([2, 64, 96, 13]))
            total_c, total_f = tf.reduce_sum(compact), tf.reduce_sum(full)
        np.testing.assert_allclose(compact.numpy(), full.numpy(), atol=1e-5)
        for name in ("depth", "normal", "semantic"):
            g_c = tf.convert_to_tensor(tape.gradient(total_c, preds[name]))  # gathers give IndexedSlices
            g_f = tf.convert_to_tensor(tape.gradient(total_f, preds[name]))
            scale = float(tf.reduce_max(tf.abs(g_f))) + 1e-12
            np.testing.assert_allclose(g_c.numpy() / scale, g_f.numpy() / scale, atol=1e-4, err_msg=name)
        film_c = tape.gradient(total_c, fixture_net.film_variables)
        film_f = tape.gradient(total_f, fixture_net.film_variables)
        for a, b in zip(film_c, film_f):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4 * (np.abs(b.numpy()).max() + 1e-12))


def test_capacity_bounds():
    assert max_active_pairs(3, "mtpsl") == 2  # k(3-k) <= 2
    assert max_active_pairs(2, "mtpsl") == 1
    assert max_active_pairs(5, "mtpsl") == 6
    assert max_active_pairs(3, "mtpsl_plus", labelled_counts=[1, 2]) == 4
    assert max_active_pairs(3, "full") == 6
    with pytest.raises(ValueError, match="unknown consistency mode"):
        max_active_pairs(3, "sometimes")


def test_inactive_slots_add_nothing(fixture_net, parity):
    """A batch with no active pair (all tasks labelled, mtpsl mode) has zero loss."""
    preds, labels, feat = _fixture_inputs(parity)
    loss = consistency_loss_compact(fixture_net, preds, labels, feat, tf.ones([2, 3]), "mtpsl", capacity=4,
                                    seed=tf.constant([1, 2], tf.int64))
    np.testing.assert_array_equal(loss.numpy(), [0.0, 0.0])


def test_mtpsl_trains_and_resumes(tmp_path):
    from tests_helpers import tiny_config

    from mtpsl_tf.training.run import run

    model_dir = tmp_path / "mtpsl"
    report = run(tiny_config(tmp_path, model_dir, epochs=1, method="mtpsl"))
    history = json.loads((model_dir / "history.json").read_text())
    assert history[0]["train"]["consistency"] > 0
    assert np.isfinite(history[0]["train"]["total"])
    assert set(report["last"]["metrics"]) >= {"semantic/miou", "depth/abs_err", "normal/mean"}
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir / "checkpoints")))
    names = list(reader.get_variable_to_shape_map())
    assert any(n.startswith("method_0/") and "gamma" in n for n in names)  # FiLM tables
    assert any(n.startswith("optimizer_film/") for n in names)
    run(tiny_config(tmp_path, model_dir, epochs=2, method="mtpsl"))
    assert [h["epoch"] for h in json.loads((model_dir / "history.json").read_text())] == [1, 2]


def test_mtpsl_builds_for_every_backbone_with_a_mapping_encoder(tmp_path):
    from tests_helpers import tiny_config

    from mtpsl_tf.data.registry import DATASETS
    from mtpsl_tf.methods.all import METHODS

    config = tiny_config(tmp_path, tmp_path / "m", method="mtpsl", backbone="resnet18_aspp")
    method = METHODS.get("mtpsl")(config, DATASETS.get("synthetic").tasks())
    assert method.facts.backbone == "resnet18_aspp"  # unregistered names: test_mtpsl_resnet.py


def test_recomputed_mapping_encoder_gives_the_same_loss_and_gradients(fixture_net, parity):
    """--remat_mapping: tf.recompute_grad around the shared encoder changes memory, not values."""
    preds, labels, feat = _fixture_inputs(parity)
    mask = tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    capacity = 2 * 6
    variables = fixture_net.trainable_variables
    results = []
    for recompute in (False, True):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(consistency_loss_compact(
                fixture_net, preds, labels, feat, mask, "mtpsl_plus", capacity=capacity,
                gumbel_noise=tf.zeros([capacity, 64, 96, 13]), recompute=recompute))
        results.append((float(loss), [g.numpy() for g in tape.gradient(loss, variables)]))
    (plain, plain_grads), (again, again_grads) = results
    assert again == pytest.approx(plain, rel=1e-6)
    for a, b in zip(again_grads, plain_grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * max(np.abs(b).max(), 1e-12))
