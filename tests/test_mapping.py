"""The joint pairwise mapping network against the authors' PyTorch Mapfns (parity fixtures)."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.methods.mtpsl import mapping

TASKS = ["semantic", "depth", "normal"]
PAIRS = [(s, t) for s in range(3) for t in range(3) if s != t]
SMALL = dict(task_names=TASKS, task_channels=[5, 1, 3], filters=[4, 4, 8, 8, 8])


@pytest.fixture(scope="module")
def reference_net(parity_weights):
    net = mapping.MappingNet(TASKS, **mapping.config_from_torch_state(parity_weights))
    mapping.load_torch_state(net, parity_weights)
    return net


def _rel_err(ours, ref):
    return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("n,s,t", [(n, s, t) for n in range(2) for s, t in PAIRS])
def test_embeddings_match_reference(reference_net, parity, n, s, t):
    # README: mapping embeddings agree to about 1e-3 relative to the output's scale.
    key = f"pair_{n}_{s}_{t}/"
    source = reference_net.embed(parity[key + "source_in"], s, s, t, training=True)
    target = reference_net.embed(parity[key + "target_in"], t, s, t, training=True)
    assert source.shape == parity[key + "map_source"].shape
    assert _rel_err(source, parity[key + "map_source"]) < 1e-3
    assert _rel_err(target, parity[key + "map_target"]) < 1e-3


def test_config_from_torch_state(parity_weights):
    assert mapping.config_from_torch_state(parity_weights) == {
        "task_channels": [13, 1, 3],
        "filters": [8, 16, 32, 64, 64],
    }


def test_load_accepts_both_prefixes_and_reports_unused(parity_weights):
    mapfns = {k: v for k, v in parity_weights.items() if k.startswith("mapfns/")}
    stripped = {k[len("mapfns/"):]: v for k, v in mapfns.items()}
    net_a = mapping.MappingNet(TASKS, [13, 1, 3], [8, 16, 32, 64, 64])
    net_b = mapping.MappingNet(TASKS, [13, 1, 3], [8, 16, 32, 64, 64])
    assert mapping.load_torch_state(net_a, mapfns) == []
    assert mapping.load_torch_state(net_b, {**stripped, "extra.thing": np.zeros(1)}) == [
        "extra.thing"
    ]
    for a, b in zip(net_a.weights, net_b.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Layouts: conv OIHW -> HWIO, FiLM tables as they are.
    np.testing.assert_array_equal(
        net_a.encoder_blocks[1].conv.kernel.numpy(),
        mapfns["mapfns/mapfns.encoder_block.1.conv.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        net_a.conv_blocks_enc[3][1].gamma.numpy(),
        mapfns["mapfns/mapfns.conv_block_enc.3.1.gamma"],
    )
    np.testing.assert_array_equal(
        net_a.input_layers[2].bn.moving_variance.numpy(),
        mapfns["mapfns/mapfns.pred_encoder_source.2.1.running_var"],
    )


def test_load_names_missing_keys_and_bad_shapes(parity_weights):
    net = mapping.MappingNet(TASKS, [13, 1, 3], [8, 16, 32, 64, 64])
    partial = dict(parity_weights)
    del partial["mapfns/mapfns.encoder_block.2.gamma"]
    del partial["mapfns/mapfns.pred_encoder_source.1.0.bias"]
    with pytest.raises(KeyError) as error:
        mapping.load_torch_state(net, partial)
    assert "encoder_block.2.gamma" in str(error.value)
    assert "pred_encoder_source.1.0.bias" in str(error.value)
    wrong = mapping.MappingNet(TASKS, [13, 1, 3], [8, 16, 32, 64, 32])
    with pytest.raises(ValueError, match="encoder_block.4"):
        mapping.load_torch_state(wrong, parity_weights)
    with pytest.raises(ValueError, match="not a Mapfns state dict"):
        mapping.config_from_torch_state({"model/encoder_block.0.0.weight": np.zeros((8, 3, 3, 3))})


# ----------------------------------------------------------------------------- pair index
def _reference_pair_index(s, t, num_tasks):
    """The authors' A_taskpair trick: one-hot [T, T] -> drop the diagonal by reshaping."""
    a = np.zeros((num_tasks, num_tasks))
    a[s, t] = 1.0
    row = a.flatten()[:-1].reshape(num_tasks - 1, num_tasks + 1)[:, 1:].flatten()
    assert row.sum() == 1.0
    return int(np.argmax(row))


@pytest.mark.parametrize("num_tasks", [2, 3, 5])
def test_pair_index_matches_reference_flatten_trick(num_tasks):
    table = mapping.pair_index_table(num_tasks)
    pairs = [(s, t) for s, t in itertools.product(range(num_tasks), repeat=2) if s != t]
    for s, t in pairs:
        assert table[s, t] == _reference_pair_index(s, t, num_tasks)
    assert sorted(table[table >= 0].tolist()) == list(range(num_tasks * (num_tasks - 1)))
    sources, targets = (np.array(v) for v in zip(*pairs))
    np.testing.assert_array_equal(
        mapping.pair_index_tf(sources, targets, num_tasks).numpy(), table[sources, targets]
    )


def test_pair_index_rejects_bad_pairs():
    with pytest.raises(ValueError, match="must differ"):
        mapping.pair_index(1, 1, 3)
    with pytest.raises(ValueError, match="out of range"):
        mapping.pair_index(0, 3, 3)


# ----------------------------------------------------------------------------- layer behaviour
def test_film_tables_init_and_shape():
    net = mapping.MappingNet(**SMALL)
    blocks = net._film_blocks()
    assert len(blocks) == 5 + 8  # encoder blocks + conv blocks (1, 1, 2, 2, 2)
    assert len(net.film_variables) == 2 * len(blocks)
    for block, width in zip(net.encoder_blocks, SMALL["filters"]):
        assert tuple(block.gamma.shape) == (width, 6)
    for block in blocks:
        np.testing.assert_array_equal(block.gamma.numpy(), np.ones((block.filters, 6)))
        np.testing.assert_array_equal(block.beta.numpy(), np.zeros((block.filters, 6)))
    film_ids = {id(v) for v in net.film_variables}
    assert not film_ids & {id(v) for v in net.non_film_trainable_variables}
    assert len(net.film_variables) + len(net.non_film_trainable_variables) == len(
        net.trainable_variables
    )


def _random_items(seed, sizes, hw=(32, 32), channels=(5, 1, 3), dtype=np.float32):
    rng = np.random.default_rng(seed)
    inputs = [
        rng.uniform(size=(n,) + hw + (c,)).astype(dtype) for n, c in zip(sizes, channels)
    ]
    pair_idx = [rng.integers(0, 6, size=n).astype(np.int32) for n in sizes]
    return inputs, pair_idx


def _perturbed_net(seed=0, dtype="float32"):
    """A small net with non-trivial FiLM tables and BatchNorm affine parameters."""
    net = mapping.MappingNet(**SMALL, dtype=dtype)
    rng = np.random.default_rng(seed)
    for v in net.weights:
        if v.path.endswith(("gamma", "beta", "moving_mean")):
            v.assign(v.numpy() + 0.3 * rng.standard_normal(v.shape))
    return net


# Batching must not change the function. In float32 the batched and one-item convolutions may
# round differently (oneDNN picks kernels by batch size, threads split reductions), and this
# deep random net amplifies rounding about 100x, so float32 is checked at 1e-4 of the output
# scale and float64 (same semantics, rounding out of the way) at 1e-5.
BATCHING_TOLERANCE = {"float32": 1e-4, "float64": 1e-5}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batched_equals_one_item_at_a_time(dtype):
    net = _perturbed_net(dtype=dtype)
    inputs, pair_idx = _random_items(1, sizes=(3, 2, 2), dtype=dtype)
    batched = net.embed_items(inputs, pair_idx, training=True)
    for task, (x, idx, out) in enumerate(zip(inputs, pair_idx, batched)):
        assert out.shape == (len(x), 1, 1, 8) and out.dtype == dtype
        for n in range(len(x)):
            s, t = np.argwhere(mapping.pair_index_table(3) == idx[n])[0]
            single = net.embed(x[n : n + 1], task, int(s), int(t), training=True).numpy()
            assert _rel_err(out[n : n + 1], single) < BATCHING_TOLERANCE[dtype]


def test_embed_accepts_per_item_pairs_and_names():
    net = _perturbed_net(dtype="float64")
    inputs, _ = _random_items(2, sizes=(0, 0, 3), dtype=np.float64)
    sources, targets = np.array([2, 2, 0]), np.array([0, 1, 2])
    per_item = net.embed(inputs[2], "normal", tf.constant(sources), tf.constant(targets), True)
    for n in range(3):
        single = net.embed(inputs[2][n : n + 1], 2, int(sources[n]), int(targets[n]), True)
        assert _rel_err(per_item[n : n + 1], single.numpy()) < 1e-5
    with pytest.raises(ValueError, match="'depth' has 3 channels, expected 1"):
        net.embed(inputs[2], "depth", 1, 2, True)
    with pytest.raises(KeyError, match="unknown task 'edge'"):
        net.embed(inputs[2], "edge", 1, 2, True)


def test_training_bn_is_per_item_and_inference_uses_running_stats():
    bn = mapping.ItemBatchNorm()
    bn.build((None, None, None, 2))
    bn.moving_mean.assign([0.5, -1.0])
    bn.moving_variance.assign([4.0, 0.25])
    bn.gamma.assign([2.0, 1.0])
    bn.beta.assign([0.0, 1.0])
    x = np.random.default_rng(3).normal(size=(2, 4, 5, 2)).astype(np.float32)
    x[1] *= 10.0
    out = bn(x, training=True).numpy()
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = x.var(axis=(1, 2), keepdims=True)  # biased, per item
    expected = (x - mean) / np.sqrt(var + 1e-5) * [2.0, 1.0] + [0.0, 1.0]
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(bn(x[:1], training=True), out[:1], atol=1e-6)
    inference = bn(x, training=False).numpy()
    expected = (x - [0.5, -1.0]) / np.sqrt(np.array([4.0, 0.25]) + 1e-5) * [2.0, 1.0] + [0.0, 1.0]
    np.testing.assert_allclose(inference, expected, atol=1e-5)
    # Running statistics stay as they were (documented: never updated).
    np.testing.assert_array_equal(bn.moving_mean.numpy(), [0.5, -1.0])


def test_get_config_round_trip():
    net = _perturbed_net()
    config = net.get_config()
    assert config["task_names"] == TASKS and config["filters"] == SMALL["filters"]
    clone = mapping.MappingNet.from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(net))
    assert isinstance(revived, mapping.MappingNet)
    assert [tuple(v.shape) for v in revived.weights] == [tuple(v.shape) for v in net.weights]
    assert [v.path for v in clone.weights] == [v.path for v in net.weights]
    assert len({v.path for v in net.weights}) == len(net.weights)
    clone.set_weights(net.get_weights())
    inputs, pair_idx = _random_items(4, sizes=(1, 1, 1))
    outputs = net.embed_items(inputs, pair_idx, True)
    for a, b in zip(outputs, clone.embed_items(inputs, pair_idx, True)):
        np.testing.assert_array_equal(a, b)


def test_runs_under_xla_and_traces_once():
    net = _perturbed_net()
    traces = []

    @tf.function(jit_compile=True)
    def run(inputs, pair_idx):
        traces.append(1)
        return net.embed_items(inputs, pair_idx, training=True)

    for seed in (5, 6):
        inputs, pair_idx = _random_items(seed, sizes=(2, 1, 2))
        compiled = run(inputs, pair_idx)
        eager = net.embed_items(inputs, pair_idx, training=True)
        # XLA fuses and reorders float32 arithmetic; this high-gain random net amplifies the
        # rounding, so compare at the embedding parity tolerance (1e-3 of the output scale).
        for a, b in zip(compiled, eager):
            assert _rel_err(a, b.numpy()) < 1e-3
    assert len(traces) == 1


def test_constructor_validation():
    with pytest.raises(ValueError, match="differ in length"):
        mapping.MappingNet(TASKS, [13, 1])
    with pytest.raises(ValueError, match="at least 2 tasks"):
        mapping.MappingNet(["semantic"], [13])
    with pytest.raises(ValueError, match="5 entries"):
        mapping.MappingNet(TASKS, [13, 1, 3], filters=[8, 16])
