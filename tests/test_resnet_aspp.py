"""Tests for the resnet18_aspp backbone (mtpsl_tf/models/resnet.py, aspp.py).

The forward pass is checked against an independent float64 numpy re-implementation of the
reference (torchvision's resnet18 modified by Multi-Task-Learning-PyTorch's
ResnetDilated(dilate_scale=8), DeepLabHead, F.interpolate(mode="bilinear")), whose conv
layout below is what PyTorch itself reports for that model. torchvision .pth files are
written without torch by a small fake-`torch` pickler, as tests/test_import_torch.py does.
"""

from __future__ import annotations

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.interop import resnet
from torch_writer import write_torch_file
from mtpsl_tf.models.aspp import ASPP, ASPPConv, DeepLabHead
from mtpsl_tf.models.registry import BACKBONES
from mtpsl_tf.interop.resnet import load_torchvision_resnet
from mtpsl_tf.models.resnet import BasicBlock, DilatedResNet18, ResNetASPP, TorchConv2D, max_pool_3x3_s2_p1

FILTERS = (4, 4, 8, 8, 16)
ASPP_WIDTH = 8
HEADS = {
    "semantic": {"channels": 5, "activation": "log_softmax"},
    "depth": {"channels": 1, "activation": "linear"},
    "normal": {"channels": 3, "activation": "l2_normalize"},
    "sal": {"channels": 1, "activation": "sigmoid"},
}
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])

# (stride, padding, dilation) of every conv, as PyTorch prints them for
# ResnetDilated(resnet18(), dilate_scale=8) of the reference.
TORCH_CONV_LAYOUT = {
    "conv1": (2, 3, 1),
    "layer1.0.conv1": (1, 1, 1), "layer1.0.conv2": (1, 1, 1),
    "layer1.1.conv1": (1, 1, 1), "layer1.1.conv2": (1, 1, 1),
    "layer2.0.conv1": (2, 1, 1), "layer2.0.conv2": (1, 1, 1), "layer2.0.downsample.0": (2, 0, 1),
    "layer2.1.conv1": (1, 1, 1), "layer2.1.conv2": (1, 1, 1),
    "layer3.0.conv1": (1, 1, 1), "layer3.0.conv2": (1, 2, 2), "layer3.0.downsample.0": (1, 0, 1),
    "layer3.1.conv1": (1, 2, 2), "layer3.1.conv2": (1, 2, 2),
    "layer4.0.conv1": (1, 2, 2), "layer4.0.conv2": (1, 4, 4), "layer4.0.downsample.0": (1, 0, 1),
    "layer4.1.conv1": (1, 4, 4), "layer4.1.conv2": (1, 4, 4),
}


# ----------------------------------------------------------------------------- torchvision layout


def torchvision_shapes(filters, fc_classes=10) -> dict:
    """Name -> shape of torchvision's resnet18 state dict at the given widths (from its module
    structure: downsample where the stride is 2 or the width changes)."""
    f, shapes = list(filters), {}

    def bn(prefix, n):
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (n,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (f[0], 3, 7, 7)
    bn("bn1", f[0])
    cin = f[0]
    for i in range(1, 5):
        cout = f[i]
        for j in range(2):
            p = f"layer{i}.{j}"
            shapes[f"{p}.conv1.weight"] = (cout, cin if j == 0 else cout, 3, 3)
            bn(f"{p}.bn1", cout)
            shapes[f"{p}.conv2.weight"] = (cout, cout, 3, 3)
            bn(f"{p}.bn2", cout)
            if j == 0 and (i > 1 or cin != cout):
                shapes[f"{p}.downsample.0.weight"] = (cout, cin, 1, 1)
                bn(f"{p}.downsample.1", cout)
        cin = cout
    shapes["fc.weight"], shapes["fc.bias"] = (fc_classes, f[4]), (fc_classes,)
    return shapes


def random_state(shapes, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    state = collections.OrderedDict()
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            state[name] = np.array(7, np.int64)
        elif name.endswith("running_var"):
            state[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        elif name.endswith(".weight") and len(shape) == 1:  # BN gamma
            state[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            state[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        else:
            state[name] = (0.2 * rng.standard_normal(shape)).astype(np.float32)
    return state


def write_pth(path, state):
    """A zip-layout torch.save file of a state dict of float32 / int64 numpy arrays."""
    return str(write_torch_file(path, state))


# ----------------------------------------------------------------------------- numpy reference (NCHW, float64)


def np_conv(x, w, stride=1, pad=0, dil=1, bias=None):
    """torch.nn.functional.conv2d: x [N,C,H,W], w [O,C,kh,kw], symmetric zero padding."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    kh, kw = w.shape[2:]
    ho = (x.shape[2] - dil * (kh - 1) - 1) // stride + 1
    wo = (x.shape[3] - dil * (kw - 1) - 1) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i * dil: i * dil + stride * (ho - 1) + 1: stride,
                      j * dil: j * dil + stride * (wo - 1) + 1: stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out if bias is None else out + bias[None, :, None, None]


def np_bn(x, p, eps=1e-5):
    g, b, m, v = (np.asarray(t, np.float64)[None, :, None, None] for t in p)
    return (x - m) / np.sqrt(v + eps) * g + b


def np_maxpool(x):
    """nn.MaxPool2d(3, 2, padding=1): -inf padding."""
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    ho, wo = (x.shape[2] - 3) // 2 + 1, (x.shape[3] - 3) // 2 + 1
    windows = [x[:, :, i: i + 2 * (ho - 1) + 1: 2, j: j + 2 * (wo - 1) + 1: 2] for i in range(3) for j in range(3)]
    return np.max(windows, axis=0)


def np_resize_bilinear(x, size):
    """F.interpolate(x, size, mode="bilinear", align_corners=False)."""
    def weights(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        lam = src - i0
        m = np.zeros((n_out, n_in))
        np.add.at(m, (np.arange(n_out), i0), 1 - lam)
        np.add.at(m, (np.arange(n_out), i1), lam)
        return m
    return np.einsum("oh,pw,nchw->ncop", weights(x.shape[2], size[0]), weights(x.shape[3], size[1]), x)


def np_backbone(images_nhwc, sd):
    relu = lambda t: np.maximum(t, 0)  # noqa: E731
    bn = lambda t, p: np_bn(t, [sd[f"{p}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")])  # noqa: E731

    def conv(t, name):
        stride, pad, dil = TORCH_CONV_LAYOUT[name]
        return np_conv(t, sd[f"{name}.weight"], stride, pad, dil)

    x = (images_nhwc.astype(np.float64) - MEAN) / STD
    x = relu(bn(conv(x.transpose(0, 3, 1, 2), "conv1"), "bn1"))
    x = np_maxpool(x)
    for i in range(1, 5):
        for j in range(2):
            p = f"layer{i}.{j}"
            out = relu(bn(conv(x, f"{p}.conv1"), f"{p}.bn1"))
            out = bn(conv(out, f"{p}.conv2"), f"{p}.bn2")
            short = bn(conv(x, f"{p}.downsample.0"), f"{p}.downsample.1") if f"{p}.downsample.0.weight" in sd else x
            x = relu(out + short)
    return x


def _oihw(layer):
    return np.transpose(layer.kernel.numpy(), (3, 2, 0, 1)).astype(np.float64)


def _bn_params(layer):
    return [v.numpy() for v in (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)]


def np_head(feature, head: DeepLabHead, size):
    """The reference's DeepLabHead (eval) + interpolation + our activation, head weights read from `head`."""
    relu = lambda t: np.maximum(t, 0)  # noqa: E731

    def unit(t, layer: ASPPConv):
        k, d = layer.kernel_size, layer.dilation_rate
        return relu(np_bn(np_conv(t, _oihw(layer.conv), 1, d * (k // 2), d), _bn_params(layer.bn)))

    aspp = head.aspp
    outs = [unit(feature, b) for b in aspp.branches]
    pooled = unit(feature.mean(axis=(2, 3), keepdims=True), aspp.pooling)
    outs.append(np_resize_bilinear(pooled, feature.shape[2:]))
    x = unit(unit(np.concatenate(outs, axis=1), aspp.project), head.hidden)
    logits = np_conv(x, _oihw(head.classifier), bias=head.classifier.bias.numpy())
    y = np_resize_bilinear(logits, size).transpose(0, 2, 3, 1)
    if head.activation == "log_softmax":
        z = y - y.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
    if head.activation == "l2_normalize":
        return y / np.linalg.norm(y, axis=-1, keepdims=True)
    if head.activation == "sigmoid":
        return 1 / (1 + np.exp(-y))
    return y


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def state():
    return random_state(torchvision_shapes(FILTERS))


@pytest.fixture(scope="module")
def model(state):
    """Tiny ResNetASPP with the fake torchvision weights loaded (built at 64x64)."""
    net = ResNetASPP(HEADS, filters=FILTERS, aspp_channels=ASPP_WIDTH, name="resnet18_aspp")
    net(tf.zeros([1, 64, 64, 3]), training=False)
    load_torchvision_resnet(net.backbone, state, "fake.pth")
    rng = np.random.default_rng(3)
    for head in net.task_heads.values():  # non-trivial head BN statistics
        units = head.aspp.branches + [head.aspp.pooling, head.aspp.project, head.hidden]
        for layer in (unit.bn for unit in units):
            n = layer.gamma.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.2, n).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype(np.float32))
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype(np.float32))
    return net


def _images(shape, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32))


# ----------------------------------------------------------------------------- outputs


def test_registered():
    assert "resnet18_aspp" in BACKBONES


def test_output_keys_shapes_dtypes(model):
    out = model(_images([2, 64, 64, 3]), training=False)
    assert set(out) == set(HEADS) | {"feature", "shared"}
    assert out["shared"] is out["feature"]  # float32: the heads' input itself (MGDA-UB's Z)
    for name, spec in HEADS.items():
        assert out[name].shape == (2, 64, 64, spec["channels"]) and out[name].dtype == tf.float32, name
    assert out["feature"].shape == (2, 8, 8, FILTERS[4]) and out["feature"].dtype == tf.float32  # stride 8
    np.testing.assert_allclose(tf.reduce_sum(tf.exp(out["semantic"]), -1).numpy(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(tf.norm(out["normal"], axis=-1).numpy(), 1.0, rtol=1e-5)
    assert np.all((out["sal"].numpy() > 0) & (out["sal"].numpy() < 1))


@pytest.mark.parametrize("size", [(64, 64), (37, 50)])
def test_matches_numpy_reference(model, state, size):
    """Whole network (eval) vs the float64 reference: exercises the dilation scheme, PyTorch
    padding (stride-2 convs and max-pool on even sizes), ImageNet normalisation, ASPP
    (incl. rate 36 > feature size, image pooling), bilinear upsampling and activations."""
    images = _images([2, *size, 3], seed=1)
    out = model(images, training=False)
    feature = np_backbone(images.numpy(), state)
    assert out["feature"].shape == (2, -(-size[0] // 8), -(-size[1] // 8), FILTERS[4])
    np.testing.assert_allclose(out["feature"].numpy(), feature.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    for name, head in model.task_heads.items():
        want = np_head(feature, head, size)
        np.testing.assert_allclose(out[name].numpy(), want, rtol=1e-4, atol=1e-4, err_msg=name)


def test_dilation_layout_matches_reference():
    backbone = DilatedResNet18(FILTERS)
    convs = {"conv1": backbone.conv1}
    for block in backbone.blocks:
        p = block.name.replace("_", ".")
        convs[f"{p}.conv1"], convs[f"{p}.conv2"] = block.conv1, block.conv2
        if block.downsample:
            convs[f"{p}.downsample.0"] = block.downsample_conv
    assert set(convs) == set(TORCH_CONV_LAYOUT)
    for name, conv in convs.items():
        got = (conv.strides[0], conv.torch_padding, conv.dilation_rate[0])
        assert got == TORCH_CONV_LAYOUT[name], name


# ----------------------------------------------------------------------------- padding


def test_stride2_conv_pads_like_pytorch_not_keras_same():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 8, 8, 2)).astype(np.float32)
    w = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)  # HWIO
    want = np_conv(x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), stride=2, pad=1).transpose(0, 2, 3, 1)
    ours = TorchConv2D(4, 3, 2, torch_padding=1)
    same = keras.layers.Conv2D(4, 3, 2, padding="same", use_bias=False)
    ours.build((None, 8, 8, 2))
    same.build((None, 8, 8, 2))
    ours.kernel.assign(w)
    same.kernel.assign(w)
    got = ours(tf.constant(x)).numpy()
    assert got.shape == (1, 4, 4, 4) and ours.compute_output_shape((1, 8, 8, 2)) == (1, 4, 4, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(same(tf.constant(x)).numpy(), want, atol=1e-2)  # Keras pads (0, 1)


def test_max_pool_pads_like_pytorch():
    x = -np.random.default_rng(0).uniform(1, 2, (1, 8, 8, 3)).astype(np.float32)  # all negative
    want = np_maxpool(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(max_pool_3x3_s2_p1(tf.constant(x)).numpy(), want)
    same = tf.nn.max_pool2d(x, 3, 2, "SAME").numpy()
    assert not np.array_equal(same, want)


# ----------------------------------------------------------------------------- pretrained weights


def _path_of(key: str) -> str:
    """torchvision key -> our variable path, by string rules written out independently."""
    module, tensor = key.rsplit(".", 1)
    module = module.replace("downsample.0", "downsample_conv").replace("downsample.1", "downsample_bn")
    for i in range(1, 5):
        for j in range(2):
            module = module.replace(f"layer{i}.{j}.", f"layer{i}_{j}/")
    ours = {"weight": "kernel" if "conv" in module else "gamma", "bias": "beta",
            "running_mean": "moving_mean", "running_var": "moving_variance"}[tensor]
    return f"resnet18_aspp/backbone/{module.replace('.', '/')}/{ours}"


@pytest.mark.parametrize("filters", [FILTERS, (4, 6, 8, 8, 16)])  # layer1 downsample when widths differ
def test_pretrained_file_places_every_tensor(tmp_path, filters):
    sd = random_state(torchvision_shapes(filters), seed=5)
    path = write_pth(tmp_path / "resnet18-fake.pth", sd)
    net = BACKBONES.get("resnet18_aspp")({"depth": HEADS["depth"]}, filters=filters, pretrained=path)
    variables = {v.path: v for v in net.backbone.weights}
    placed = set()
    for key, value in sd.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        variable = variables[_path_of(key)]
        want = np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value  # OIHW -> HWIO
        np.testing.assert_array_equal(variable.numpy(), want, err_msg=key)
        placed.add(variable.path)
    assert placed == set(variables)  # every backbone variable comes from the file


def test_pretrained_errors(tmp_path, state):
    heads = {"depth": HEADS["depth"]}
    build = BACKBONES.get("resnet18_aspp")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build(heads, filters=FILTERS, pretrained=str(tmp_path / "nope.pth"))
    extra = collections.OrderedDict(state, **{"layer5.0.conv1.weight": np.zeros((1, 1, 1, 1), np.float32)})
    with pytest.raises(ValueError, match=r"extra\.pth: unexpected tensor 'layer5\.0\.conv1\.weight'"):
        build(heads, filters=FILTERS, pretrained=write_pth(tmp_path / "extra.pth", extra))

    net = ResNetASPP(heads, filters=FILTERS, aspp_channels=ASPP_WIDTH)
    net(tf.zeros([1, 32, 32, 3]))

    def fails(sd, match):
        path = write_pth(tmp_path / "bad.pth", sd)
        with pytest.raises(ValueError, match=match) as info:
            resnet.load_torchvision_resnet_file(net.backbone, path)
        assert str(info.value).startswith(path)

    missing = collections.OrderedDict((k, v) for k, v in state.items() if k != "layer2.0.downsample.1.running_var")
    fails(missing, r"missing tensor 'layer2\.0\.downsample\.1\.running_var'")
    reshaped = collections.OrderedDict(state)
    reshaped["layer3.1.conv2.weight"] = np.zeros((8, 8, 1, 1), np.float32)
    fails(reshaped, r"'layer3\.1\.conv2\.weight' has shape \(8, 8, 1, 1\), the model expects \(8, 8, 3, 3\)")
    wrong_width = random_state(torchvision_shapes((64, 64, 128, 256, 512)))  # full-size file, tiny model
    fails(wrong_width, r"'conv1\.weight' has shape \(64, 3, 7, 7\)")
    integer = collections.OrderedDict(state)
    integer["bn1.running_mean"] = np.zeros(4, np.int64)
    fails(integer, r"'bn1\.running_mean' has dtype int64")


def test_failed_load_assigns_nothing(state):
    net = ResNetASPP({"depth": HEADS["depth"]}, filters=FILTERS, aspp_channels=ASPP_WIDTH)
    net(tf.zeros([1, 32, 32, 3]))
    before = [v.numpy() for v in net.backbone.weights]
    bad = collections.OrderedDict(state)
    bad["layer4.1.bn2.running_var"] = np.ones(3, np.float32)  # last tensor checked
    with pytest.raises(ValueError, match="layer4.1.bn2.running_var"):
        load_torchvision_resnet(net.backbone, bad, "x.pth")
    for old, variable in zip(before, net.backbone.weights):
        np.testing.assert_array_equal(variable.numpy(), old)
    with pytest.raises(ValueError, match="build the model"):
        load_torchvision_resnet(DilatedResNet18(FILTERS), state, "x.pth")


def test_variant_and_filter_errors():
    build = BACKBONES.get("resnet18_aspp")
    with pytest.raises(ValueError, match="variant 'wide'.*only 'standard'"):
        build(HEADS, variant="wide")
    with pytest.raises(ValueError, match="5 positive widths"):
        build(HEADS, filters=(4, 4, 8, 8))
    with pytest.raises(ValueError, match="unknown activation"):
        build({"x": {"channels": 2, "activation": "softmax"}})


# ----------------------------------------------------------------------------- config, precision, XLA, training


@pytest.mark.parametrize("layer", [
    TorchConv2D(4, 3, 2, torch_padding=1, dilation_rate=1, name="conv"),
    BasicBlock(8, 1, (2, 4), True, name="block"),
    DilatedResNet18(FILTERS, name="backbone"),
    ASPPConv(8, 3, 12, name="unit"),
    ASPP(8, (2, 3, 4), 0.25, name="aspp"),
    DeepLabHead(3, "l2_normalize", 8, (1, 2, 3), 0.1, name="head"),
], ids=lambda layer: type(layer).__name__)
def test_layer_config_round_trip(layer):
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == config


def test_model_serialisation_round_trip(model):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert type(restored) is ResNetASPP and restored.get_config() == model.get_config()
    assert restored.heads == HEADS and restored.filters == list(FILTERS) and restored.aspp_channels == ASPP_WIDTH
    assert restored.built  # rebuilt from the build config, with the same variable paths (checkpoint keys)
    paths = [v.path for v in model.weights]
    assert [v.path for v in restored.weights] == paths and len(set(paths)) == len(paths)
    restored.set_weights(model.get_weights())
    images = _images([1, 32, 40, 3], seed=2)
    got, want = restored(images), model(images)
    for name in want:
        np.testing.assert_array_equal(got[name].numpy(), want[name].numpy())


def test_mixed_float16_outputs_float32():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        net = ResNetASPP(HEADS, filters=FILTERS, aspp_channels=ASPP_WIDTH)
        out = net(_images([1, 64, 64, 3]), training=True)
    finally:
        keras.config.set_dtype_policy(previous)
    assert net.backbone.conv1.compute_dtype == "float16"
    for name, value in out.items():
        # "shared" is by design the heads' own input, in the compute dtype (MGDA-UB's target).
        assert value.dtype == (tf.float16 if name == net.shared_output else tf.float32), name
        assert np.all(np.isfinite(value.numpy())), name


def test_xla_forward_matches_eager():
    net = ResNetASPP({"normal": HEADS["normal"]}, filters=FILTERS, aspp_channels=ASPP_WIDTH)
    images = _images([1, 48, 40, 3], seed=4)

    @tf.function(jit_compile=True)
    def compiled(x):
        return net(x, training=False)

    got, want = compiled(images), net(images, training=False)
    for name in want:
        np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), rtol=1e-4, atol=1e-4, err_msg=name)


def test_training_step_updates_statistics_and_reaches_every_variable():
    net = ResNetASPP({"depth": HEADS["depth"], "semantic": HEADS["semantic"]}, filters=FILTERS,
                     aspp_channels=ASPP_WIDTH)
    images = _images([2, 32, 32, 3], seed=6)
    net(images)
    before = net.backbone.bn1.moving_mean.numpy().copy()
    with tf.GradientTape() as tape:
        out = net(images, training=True)
        loss = tf.reduce_mean(out["depth"] ** 2) - tf.reduce_mean(out["semantic"])
    grads = tape.gradient(loss, net.trainable_variables)
    assert all(g is not None for g in grads)
    assert not np.allclose(net.backbone.bn1.moving_mean.numpy(), before)
    # Dropout (0.5 in the ASPP projection) is active in training only.
    a, b = net(images, training=True), net(images, training=True)
    assert not np.allclose(a["depth"].numpy(), b["depth"].numpy())
    np.testing.assert_array_equal(net(images)["depth"].numpy(), net(images)["depth"].numpy())
