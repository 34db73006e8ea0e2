"""Layers: first-maximum pooling/unpooling (PyTorch semantics), PyTorch BatchNorm, configs,
XLA compilation and TFLite conversion with builtin ops only."""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.models.heads import TaskHead
from mtpsl_tf.models.layers import ArgMaxPool2D, BatchNorm, ConvBNReLU, MaxUnpool2D, arithmetic_switches
from mtpsl_tf.models.segnet import SegNet

TINY_FILTERS = [4, 4, 8, 8, 8]
TINY_HEADS = {
    "semantic": {"channels": 5, "activation": "log_softmax"},
    "depth": {"channels": 1, "activation": "linear"},
    "normal": {"channels": 3, "activation": "l2_normalize"},
}


def tied_input(seed: int, shape=(2, 8, 12, 5)) -> np.ndarray:
    """ReLU of small random integers: many tied windows, about 1/16 all-zero windows."""
    rng = np.random.default_rng(seed)
    return np.maximum(rng.integers(-2, 3, size=shape), 0).astype(np.float32)


def numpy_first_max_unpool(x: np.ndarray):
    """Reference from the definition: per 2x2 window, the FIRST maximum in row-major order.

    x: [B,H,W,C] -> (pooled [B,H/2,W/2,C], unpooled [B,H,W,C] with the pooled value at the
    first maximum of each window and 0 elsewhere, = torch MaxUnpool2d(MaxPool2d(x))).
    """
    b, h, w, c = x.shape
    windows = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(b, h // 2, w // 2, c, 4)
    first = np.argmax(windows, axis=-1)  # numpy argmax returns the first maximum
    pooled = np.take_along_axis(windows, first[..., None], axis=-1)[..., 0]
    onehot = (np.arange(4) == first[..., None]).astype(x.dtype)
    scattered = (onehot * pooled[..., None]).reshape(b, h // 2, w // 2, c, 2, 2)
    unpooled = scattered.transpose(0, 1, 4, 2, 5, 3).reshape(b, h, w, c)
    return pooled, unpooled, onehot.reshape(b, h // 2, w // 2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(b, h, w, c)


def unpool_via_tf_argmax(x: np.ndarray) -> np.ndarray:
    """Unpooling built from tf.nn.max_pool_with_argmax (flat indices scattered back)."""
    pooled, argmax = tf.nn.max_pool_with_argmax(x, 2, 2, "VALID", include_batch_in_index=True)
    flat = tf.scatter_nd(tf.reshape(argmax, [-1, 1]), tf.reshape(pooled, [-1]), [x.size])
    return tf.reshape(flat, x.shape).numpy()


def pool_unpool(x):
    pooled, switches = ArgMaxPool2D()(x)
    return pooled, MaxUnpool2D()([pooled, switches])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unpool_matches_first_max_definition_with_ties(seed):
    x = tied_input(seed)
    pooled_ref, unpooled_ref, _ = numpy_first_max_unpool(x)
    windows = x.reshape(2, 4, 2, 6, 2, 5).max(axis=(2, 4))
    ties = (x.reshape(2, 4, 2, 6, 2, 5) == windows[:, :, None, :, None, :]).sum(axis=(2, 4)) > 1
    assert ties.mean() > 0.3  # the test really exercises ties
    pooled, unpooled = pool_unpool(tf.constant(x))
    np.testing.assert_array_equal(pooled.numpy(), pooled_ref)
    np.testing.assert_array_equal(unpooled.numpy(), unpooled_ref)
    np.testing.assert_array_equal(pooled.numpy(), tf.nn.max_pool2d(x, 2, 2, "VALID").numpy())


def test_unpool_all_zero_windows_put_value_top_left():
    x = np.zeros((1, 4, 4, 2), np.float32)
    x[0, 2, 3, 1] = 1.0  # one non-zero window; the other windows are all-zero ties
    _, unpooled = pool_unpool(tf.constant(x))
    np.testing.assert_array_equal(unpooled.numpy(), x)
    _, switches = ArgMaxPool2D()(tf.constant(x))
    # all-zero window -> switch at position 0 (top-left) only
    np.testing.assert_array_equal(switches.numpy()[0, 0, 0].reshape(4, 2)[:, 0], [1, 0, 0, 0])


def test_unpool_matches_tf_argmax_without_ties():
    x = np.random.default_rng(3).permutation(2 * 8 * 12 * 5).reshape(2, 8, 12, 5).astype(np.float32)
    x -= x.mean()  # distinct values, both signs
    _, unpooled = pool_unpool(tf.constant(x))
    np.testing.assert_array_equal(unpooled.numpy(), unpool_via_tf_argmax(x))
    np.testing.assert_array_equal(unpooled.numpy(), numpy_first_max_unpool(x)[1])


def test_pool_gradient_flows_to_first_maximum_only():
    x = tf.constant(tied_input(4))
    weights = tf.constant(np.random.default_rng(5).normal(size=(2, 4, 6, 5)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        pooled, _ = ArgMaxPool2D()(x)
        loss = tf.reduce_sum(pooled * weights)
    grad = tape.gradient(loss, x).numpy()
    _, _, first = numpy_first_max_unpool(x.numpy())
    upsampled = np.repeat(np.repeat(weights.numpy(), 2, axis=1), 2, axis=2)
    np.testing.assert_array_equal(grad, first * upsampled)


def test_pool_unpool_under_xla_matches_eager():
    x = tf.constant(tied_input(6))
    compiled = tf.function(pool_unpool, jit_compile=True)
    pooled, unpooled = compiled(x)
    ref_pooled, ref_unpooled, _ = numpy_first_max_unpool(x.numpy())
    np.testing.assert_array_equal(pooled.numpy(), ref_pooled)
    np.testing.assert_array_equal(unpooled.numpy(), ref_unpooled)


def test_pool_rejects_odd_size():
    with pytest.raises(ValueError, match="even"):
        ArgMaxPool2D()(tf.zeros([1, 5, 4, 2]))


def test_tiny_segnet_converts_to_builtin_tflite_and_matches():
    from ai_edge_litert.interpreter import Interpreter

    keras.utils.set_random_seed(0)
    model = SegNet(TINY_HEADS, filters=TINY_FILTERS)
    images = np.random.default_rng(7).uniform(size=(1, 32, 64, 3)).astype(np.float32)
    expected = {k: v.numpy() for k, v in model(images, training=False).items()}

    @tf.function(input_signature=[tf.TensorSpec([1, 32, 64, 3], tf.float32, name="image")])
    def serve(image):
        return model(image, training=False)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops allowed
    flatbuffer = converter.convert()
    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
    interpreter.invoke()
    # Outputs are matched by shape (all four differ); concrete-function models carry no names.
    got = {tuple(d["shape"]): interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}
    assert sorted(got) == sorted(v.shape for v in expected.values())
    for key, value in expected.items():
        np.testing.assert_allclose(got[value.shape], value, atol=1e-4, err_msg=key)


@pytest.mark.parametrize("seed", [0, 1])
def test_arithmetic_switches_equal_compare_switches_with_ties(seed):
    """The inference-only switches are the same first-maximum one-hots, ties included, also
    for differences of one ulp and subnormal values."""
    x = tied_input(seed)
    x[0, 0, 0, 0], x[0, 0, 1, 0] = 1.0, np.nextafter(np.float32(1.0), np.float32(2.0))  # one ulp apart
    x[1, 0, 0, 0], x[1, 1, 1, 0] = np.float32(1e-45), np.float32(2e-45)  # subnormals
    x[1, 0, 0, 1] = x[1, 0, 1, 1] = x[1, 1, 0, 1] = x[1, 1, 1, 1] = 0.0  # an all-zero window
    pooled_ref, switches_ref = ArgMaxPool2D()(tf.constant(x))
    pooled, switches = ArgMaxPool2D(switch_ops="arithmetic")(tf.constant(x))
    np.testing.assert_array_equal(pooled.numpy(), pooled_ref.numpy())
    np.testing.assert_array_equal(switches.numpy(), switches_ref.numpy())
    np.testing.assert_array_equal(MaxUnpool2D()([pooled, switches]).numpy(), numpy_first_max_unpool(x)[1])


def test_arithmetic_switches_context_selects_and_restores():
    model = SegNet(TINY_HEADS, filters=TINY_FILTERS)
    with arithmetic_switches(model) as count:
        assert count == 5 and {p.switch_ops for p in model.pools} == {"arithmetic"}
    assert {p.switch_ops for p in model.pools} == {"compare"}
    with pytest.raises(ValueError, match="switch_ops"):
        ArgMaxPool2D(switch_ops="argmax")


def _litert(model, images, arithmetic):
    from ai_edge_litert.interpreter import Interpreter

    @tf.function(input_signature=[tf.TensorSpec([1, 32, 64, 3], tf.float32, name="image")])
    def serve(image):
        return model(image, training=False)

    with arithmetic_switches(model) if arithmetic else contextlib.nullcontext():
        concrete = serve.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert(), num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
    interpreter.invoke()
    partitions = sum(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    return {tuple(d["shape"]): interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}, \
        partitions, ops


def test_arithmetic_switches_make_the_segnet_one_xnnpack_partition():
    keras.utils.set_random_seed(0)
    model = SegNet(TINY_HEADS, filters=TINY_FILTERS)
    images = np.random.default_rng(7).uniform(size=(1, 32, 64, 3)).astype(np.float32)
    expected = {k: v.numpy() for k, v in model(images, training=False).items()}
    got, partitions, ops = _litert(model, images, arithmetic=True)
    _, compare_partitions, compare_ops = _litert(model, images, arithmetic=False)
    # Network outputs (log-probabilities, depth, normals, feature): outside XNNPACK remain
    # only the heads' LOG_SOFTMAX and the normals' L2 normalisation (SUM, RSQRT).
    assert partitions <= 2 < compare_partitions
    assert not ops & {"EQUAL", "LOGICAL_AND", "LOGICAL_OR", "LOGICAL_NOT", "CAST"}
    assert "EQUAL" in compare_ops
    for key, value in expected.items():
        np.testing.assert_allclose(got[value.shape], value, atol=1e-4, err_msg=key)


def test_batchnorm_training_normalises_with_batch_statistics_and_updates_running():
    x = np.random.default_rng(8).normal(2.0, 3.0, size=(2, 3, 4, 5)).astype(np.float32)
    layer = BatchNorm()
    layer.build(x.shape)
    gamma = np.linspace(0.5, 1.5, 5).astype(np.float32)
    beta = np.linspace(-1, 1, 5).astype(np.float32)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    out = layer(tf.constant(x), training=True).numpy()
    flat = x.reshape(-1, 5).astype(np.float64)
    mean, var = flat.mean(0), flat.var(0)  # biased variance normalises
    manual = (x - mean) / np.sqrt(var + 1e-5) * gamma + beta
    np.testing.assert_allclose(out, manual, rtol=1e-5, atol=1e-5)
    n = flat.shape[0]
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.9 * 0.0 + 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), 0.9 * 1.0 + 0.1 * var * n / (n - 1), rtol=1e-5)


def test_batchnorm_inference_uses_running_statistics():
    x = np.random.default_rng(9).normal(size=(2, 2, 2, 3)).astype(np.float32)
    layer = BatchNorm(epsilon=1e-3)
    layer.build(x.shape)
    mean, var = np.array([0.1, -0.2, 0.3], np.float32), np.array([0.5, 2.0, 4.0], np.float32)
    layer.moving_mean.assign(mean)
    layer.moving_variance.assign(var)
    layer.gamma.assign([2.0, 1.0, 0.5])
    layer.beta.assign([0.0, 1.0, -1.0])
    out = layer(tf.constant(x), training=False).numpy()
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 1e-3) * [2.0, 1.0, 0.5] + [0.0, 1.0, -1.0], rtol=1e-6)
    np.testing.assert_array_equal(layer.moving_mean.numpy(), mean)  # inference does not update


@pytest.mark.parametrize("layer", [
    BatchNorm(epsilon=1e-3, momentum=0.2, name="bn"),
    ConvBNReLU(6, depth=2, name="cbr"),
    ArgMaxPool2D(name="pool"),
    MaxUnpool2D(name="unpool"),
    TaskHead(4, 7, "sigmoid", name="head"),
], ids=lambda layer: type(layer).__name__)
def test_layer_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == config


def test_segnet_config_round_trip():
    model = SegNet(TINY_HEADS, variant="deep", filters=TINY_FILTERS, name="net")
    config = model.get_config()
    clone = SegNet.from_config(config)
    assert clone.get_config() == config
    assert clone.heads == TINY_HEADS and clone.variant == "deep" and clone.filters == TINY_FILTERS
