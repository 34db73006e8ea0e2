"""--mapping_chunks: the consistency loss over the active items in groups (methods/mtpsl/
chunked.py) has the value and the gradients of the one-call loss, in a step, under XLA, and
the flag is validated."""

import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.methods.mtpsl.chunked import chunk_bounds, consistency_sum_chunked
from mtpsl_tf.methods.mtpsl.compact import consistency_loss_compact, slot_inputs
from mtpsl_tf.methods.mtpsl.mapping import MappingNet
from tests_helpers import assert_same_mtpsl_step, mtpsl_batch, tiny_mtpsl_model

FILTERS = [4, 8, 8, 8, 8]
MASK = tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
CAPACITY = 7  # mtpsl_plus here has 6 active items: 7 slots leave one padding slot (valid 0)


@pytest.mark.parametrize("capacity, chunks, bounds", [
    (4, 2, [(0, 2), (2, 4)]),
    (7, 3, [(0, 3), (3, 5), (5, 7)]),
    (3, 8, [(0, 1), (1, 2), (2, 3)]),
    (5, 1, [(0, 5)]),
])
def test_chunk_bounds_cover_the_slots_in_order(capacity, chunks, bounds):
    assert chunk_bounds(capacity, chunks) == bounds


def test_chunk_bounds_refuse_zero():
    with pytest.raises(ValueError, match="chunks must be >= 1"):
        chunk_bounds(4, 0)


@pytest.fixture(scope="module")
def setup():
    net = MappingNet(["semantic", "depth", "normal"], [13, 1, 3], filters=FILTERS)
    batch = mtpsl_batch(None)
    rng = np.random.default_rng(1)
    preds = {"semantic": tf.constant(rng.normal(size=[2, 32, 32, 13]), tf.float32),
             "depth": tf.constant(rng.uniform(0.5, 5, [2, 32, 32, 1]), tf.float32),
             "normal": tf.constant(rng.normal(size=[2, 32, 32, 3]), tf.float32)}
    feat = tf.constant(rng.normal(size=[2, 1, 1, 8]), tf.float32)
    return net, batch["labels_aug"], preds, feat


def _loss_and_grads(setup, chunks, recompute=False, jit_compile=None):
    """(loss, gradients w.r.t. the net's variables and the three predictions), as numpy;
    eager when `jit_compile` is None, else in a tf.function."""
    if jit_compile is None:
        loss, grads = _tensors(setup, chunks, recompute)
    else:
        loss, grads = tf.function(lambda: _tensors(setup, chunks, recompute), jit_compile=jit_compile)()
    return float(loss), [tf.convert_to_tensor(g).numpy() for g in grads]


def _tensors(setup, chunks, recompute):
    net, labels, preds, feat = setup
    noise = tf.zeros([CAPACITY, 32, 32, 13])
    with tf.GradientTape() as tape:
        tape.watch(list(preds.values()))
        if chunks is None:
            loss = tf.reduce_sum(consistency_loss_compact(net, preds, labels, feat, MASK, "mtpsl_plus",
                                                          capacity=CAPACITY, gumbel_noise=noise))
        else:
            slots = slot_inputs(net, preds, labels, MASK, "mtpsl_plus", CAPACITY, gumbel_noise=noise)
            loss = consistency_sum_chunked(net, slots, feat, 0.5, chunks, recompute=recompute)
        # An upstream gradient other than 1 (the method divides by the batch and weights).
        loss = 0.75 * loss
    return loss, tape.gradient(loss, net.trainable_variables + list(preds.values()))


def _assert_same(result, expected, rtol, atol_of_max):
    (loss, grads), (loss_e, grads_e) = result, expected
    assert loss == pytest.approx(loss_e, rel=rtol)
    scale = max(np.abs(g).max() for g in grads_e)
    assert len(grads) == len(grads_e)
    for a, b in zip(grads, grads_e):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol_of_max * scale)


@pytest.fixture(scope="module")
def one_call(setup):
    """The one-call loss and gradients in a tf.function (traced once for the module)."""
    expected = _loss_and_grads(setup, None, jit_compile=False)
    assert expected[0] > 0
    return expected


@pytest.mark.parametrize("chunks", [2, 3, 7, 20])
def test_chunked_loss_and_gradients_equal_the_one_call_loss(setup, one_call, chunks):
    # Conv biases before the per-item BatchNorm have a true gradient of 0 (float noise).
    _assert_same(_loss_and_grads(setup, chunks, jit_compile=False), one_call, 1e-5, 1e-5)


def test_chunked_eagerly_and_with_recomputation(setup):
    expected = _loss_and_grads(setup, None)
    _assert_same(_loss_and_grads(setup, 2), expected, 1e-5, 1e-5)
    _assert_same(_loss_and_grads(setup, 3, recompute=True), expected, 1e-5, 1e-5)


# Slow (~50 s of CI): `python benchmarks/train_step.py --method=mtpsl --option=mapping_chunks=3` compiles
# the chunked step with XLA (its default); `pytest -m slow` runs this comparison.
@pytest.mark.slow
def test_chunked_loss_compiles_under_xla(setup):
    """Against the one-call loss also under XLA: its float reassociation moves the first
    layer's gradients (sums over every pixel of an item-normalised map) by up to ~5e-3
    relative between differently shaped graphs, as in tests/test_remat.py."""
    expected = _loss_and_grads(setup, None, jit_compile=True)
    _assert_same(_loss_and_grads(setup, 3, jit_compile=True), expected, 1e-3, 1e-3)


def test_mtpsl_step_with_chunks_equals_the_plain_step():
    """The full train-step gradients (network, mapping net, FiLM tables) with
    --mapping_chunks=2 equal those of the plain step on the same weights and batch."""
    assert_same_mtpsl_step(tiny_mtpsl_model(), tiny_mtpsl_model(mapping_chunks=2))


@pytest.mark.parametrize("method, precision, options, message", [
    ("mtpsl", "float32", {"mapping_chunks": 0}, "--mapping_chunks must be >= 1, got 0"),
    ("contrastive", "float32", {"mapping_chunks": 2}, "--method=contrastive does not support --mapping_chunks=2"),
    ("mtpsl", "mixed_float16", {"mapping_chunks": 2}, "not mixed_float16"),
])
def test_bad_mapping_chunks_are_named(method, precision, options, message):
    with pytest.raises(ValueError, match=message):
        tiny_mtpsl_model(method, precision, **options)


def test_chunked_refuses_mixed_float16(setup):
    _, labels, preds, feat = setup
    net = MappingNet(["semantic", "depth", "normal"], [13, 1, 3], filters=FILTERS, dtype="mixed_float16")
    slots = slot_inputs(net, preds, labels, MASK, "mtpsl_plus", CAPACITY, gumbel_noise=tf.zeros([CAPACITY, 32, 32, 13]))
    with pytest.raises(ValueError, match="needs a float32 or float64 mapping net, not mixed_float16"):
        consistency_sum_chunked(net, slots, feat, 0.5, 2)
