"""Tests for the segnet_mtan backbone (mtpsl_tf/models/segnet_mtan.py).

The forward pass is checked against a float64 numpy transcription of lorenmt/mtan's
`im2im_pred/model_segnet_mtan.py` forward (NCHW, its module names and indexing: encoder_att[t][j],
encoder_block_att[j], decoder_att[t][-j-1], decoder_block_att[-j-1]), fed with our model's
weights, at tiny widths, in inference (random running statistics) and training mode (batch
statistics, and the shared attention blocks' running statistics updated once per task).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.models.registry import BACKBONES
from mtpsl_tf.models.segnet_mtan import SegNetMTAN

FILTERS = [4, 8, 8, 8, 8]
HEADS = {
    "semantic": {"channels": 5, "activation": "log_softmax"},
    "depth": {"channels": 1, "activation": "linear"},
    "normal": {"channels": 3, "activation": "l2_normalize"},
}
SIZE = (64, 64)


# ----------------------------------------------------------------------------- numpy mtan (NCHW, float64)


def np_conv(x, w, b):
    """conv2d, stride 1, padding k//2: x [N,C,H,W], w [O,C,k,k], b [O]."""
    k = w.shape[2]
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.zeros((x.shape[0], w.shape[0], x.shape[2], x.shape[3]))
    for i in range(k):
        for j in range(k):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + x.shape[2], j:j + x.shape[3]], w[:, :, i, j])
    return out + b[None, :, None, None]


class NpBN:
    """nn.BatchNorm2d: training normalises with the biased batch variance and moves the running
    statistics (momentum 0.1, unbiased variance), inference uses them."""

    def __init__(self, gamma, beta, mean, var):
        self.gamma, self.beta, self.mean, self.var = (np.asarray(a, np.float64) for a in (gamma, beta, mean, var))

    def __call__(self, x, training):
        if training:
            mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
            n = x.size / x.shape[1]
            self.mean = 0.9 * self.mean + 0.1 * mean
            self.var = 0.9 * self.var + 0.1 * var * n / (n - 1)
        else:
            mean, var = self.mean, self.var
        c = lambda a: a[None, :, None, None]  # noqa: E731
        return (x - c(mean)) / np.sqrt(c(var) + 1e-5) * c(self.gamma) + c(self.beta)


def relu(x):
    return np.maximum(x, 0)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_maxpool_indices(x):
    """nn.MaxPool2d(2, 2, return_indices=True), first maximum of each window (row-major)."""
    n, c, h, w = x.shape
    windows = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
    index = windows.argmax(-1)
    return np.take_along_axis(windows, index[..., None], -1)[..., 0], index


def np_unpool(y, index):
    """nn.MaxUnpool2d(2, 2): each value back at its window's recorded position, zero elsewhere."""
    n, c, h, w = y.shape
    out = np.zeros((n, c, h, w, 4))
    np.put_along_axis(out, index[..., None], y[..., None], -1)
    return out.reshape(n, c, h, w, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, 2 * h, 2 * w)


def np_upsample2x(x):
    """F.interpolate(scale_factor=2, mode="bilinear", align_corners=True)."""
    def matrix(n):
        src = np.arange(2 * n) * (n - 1) / (2 * n - 1)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n - 1)
        m = np.zeros((2 * n, n))
        np.add.at(m, (np.arange(2 * n), i0), 1 - (src - i0))
        np.add.at(m, (np.arange(2 * n), i1), src - i0)
        return m
    return np.einsum("oh,pw,nchw->ncop", matrix(x.shape[2]), matrix(x.shape[3]), x)


def _oihw(conv):
    return np.transpose(conv.kernel.numpy(), (3, 2, 0, 1)).astype(np.float64), conv.bias.numpy().astype(np.float64)


def _bn(layer):
    return NpBN(*(v.numpy() for v in (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)))


class conv_layer:
    """mtan's conv_layer (conv3x3-BN-ReLU) from one of our ConvBNReLU (depth 1)."""

    def __init__(self, block):
        (self.w, self.b), self.bn = _oihw(block.convs[0]), _bn(block.norms[0])

    def __call__(self, x, training):
        return relu(self.bn(np_conv(x, self.w, self.b), training))


def att_layer(gate):
    """mtan's att_layer (conv1x1-BN-ReLU-conv1x1-BN-sigmoid) from our AttentionGate."""
    (w0, b0), (w1, b1), bn0, bn1 = _oihw(gate.conv0), _oihw(gate.conv1), _bn(gate.bn0), _bn(gate.bn1)
    return lambda x, training: sigmoid(bn1(np_conv(relu(bn0(np_conv(x, w0, b0), training)), w1, b1), training))


def sequential(blocks):
    fns = [conv_layer(b) for b in blocks]

    def run(x, training):
        for fn in fns:
            x = fn(x, training)
        return x
    return run


class NpMTAN:
    """mtan's SegNet-MTAN forward with our model's weights under mtan's module names."""

    def __init__(self, model: SegNetMTAN):
        self.tasks = list(model.heads)
        self.encoder_block = [conv_layer(b) for b in model.encoder_block]
        self.decoder_block = [conv_layer(b) for b in model.decoder_block]
        self.conv_block_enc = [sequential(s) for s in model.conv_block_enc]
        self.conv_block_dec = [sequential(s) for s in model.conv_block_dec]
        self.encoder_block_att = [conv_layer(b) for b in model.encoder_block_att]
        self.decoder_block_att = [conv_layer(b) for b in model.decoder_block_att]
        self.encoder_att = [[att_layer(g) for g in model.branches[t].encoder_gates] for t in self.tasks]
        self.decoder_att = [[att_layer(g) for g in model.branches[t].decoder_gates] for t in self.tasks]
        self.pred = [(_oihw(model.branches[t].head.hidden), _oihw(model.branches[t].head.out), HEADS[t]["activation"])
                     for t in self.tasks]

    def forward(self, x, training):
        g_encoder, g_maxpool, indices, g_upsampl, g_decoder = [], [], [], [], []
        for i in range(5):
            e0 = self.encoder_block[i](x if i == 0 else g_maxpool[i - 1], training)
            e1 = self.conv_block_enc[i](e0, training)
            g_encoder.append((e0, e1))
            pooled, index = np_maxpool_indices(e1)
            g_maxpool.append(pooled)
            indices.append(index)
        for i in range(5):
            up = np_unpool(g_maxpool[-1] if i == 0 else g_decoder[i - 1][-1], indices[-i - 1])
            d0 = self.decoder_block[-i - 1](up, training)
            g_upsampl.append(up)
            g_decoder.append((d0, self.conv_block_dec[-i - 1](d0, training)))
        preds = []
        for t in range(len(self.tasks)):
            att = None
            for j in range(5):
                a0 = self.encoder_att[t][j](g_encoder[j][0] if j == 0 else np.concatenate(
                    [g_encoder[j][0], att], axis=1), training)
                att, _ = np_maxpool_indices(self.encoder_block_att[j](a0 * g_encoder[j][1], training))
            for j in range(5):
                d = self.decoder_block_att[-j - 1](np_upsample2x(att), training)
                att = self.decoder_att[t][-j - 1](np.concatenate([g_upsampl[j], d], axis=1), training) * g_decoder[j][-1]
            (w0, b0), (w1, b1), activation = self.pred[t]
            y = np_conv(np_conv(att, w0, b0), w1, b1)
            if activation == "log_softmax":
                z = y - y.max(1, keepdims=True)
                y = z - np.log(np.exp(z).sum(1, keepdims=True))
            elif activation == "l2_normalize":
                y = y / np.linalg.norm(y, axis=1, keepdims=True)
            preds.append(y.transpose(0, 2, 3, 1))
        return preds, g_maxpool[-1].transpose(0, 2, 3, 1)


# ----------------------------------------------------------------------------- fixtures


def _randomise_batchnorm(model, seed=1):
    """Non-trivial affine parameters, running statistics and conv biases."""
    rng = np.random.default_rng(seed)
    for v in model.variables:
        n = v.shape[0] if len(v.shape) == 1 else None
        if n is None:
            continue
        if v.path.endswith("moving_variance"):
            v.assign(rng.uniform(0.5, 2.0, n).astype(np.float32))
        elif v.path.endswith("gamma"):
            v.assign(rng.uniform(0.5, 1.5, n).astype(np.float32))
        else:  # beta, moving_mean, conv biases
            v.assign(rng.normal(0, 0.2, n).astype(np.float32))


def _images(seed=0, shape=(2, *SIZE, 3)):
    return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    net = BACKBONES.get("segnet_mtan")(heads=HEADS, filters=FILTERS)
    net(tf.zeros([1, *SIZE, 3]), training=False)
    _randomise_batchnorm(net)
    return net


def _compare(model, training):
    images = _images()
    reference = NpMTAN(model)
    expected, feature = reference.forward(images.transpose(0, 3, 1, 2).astype(np.float64), training)
    got = model(tf.constant(images), training=training)
    for task, want in zip(HEADS, expected):
        # As tests/test_segnet_parity.py: training-mode normals 3e-3 absolute (the L2
        # normalisation amplifies float32 rounding at a few small-norm pixels).
        atol = 3e-3 if training and task == "normal" else 2e-4 * max(1.0, np.abs(want).max())
        np.testing.assert_allclose(got[task].numpy(), want, atol=atol, err_msg=task)
    np.testing.assert_allclose(got["feature"].numpy(), feature, atol=1e-4 * max(1.0, np.abs(feature).max()))
    return reference, None


def test_inference_matches_numpy_mtan(model):
    _compare(model, training=False)


def test_training_mode_matches_numpy_mtan_and_shared_statistics_move_per_task(model):
    saved = [v.numpy() for v in model.variables]
    try:
        reference, _ = _compare(model, training=True)
        # decoder_block_att[0] serves every task: its running statistics moved once per task,
        # in task order, as the reference's repeated module calls.
        bn = model.decoder_block_att[0].norms[0]
        np.testing.assert_allclose(bn.moving_mean.numpy(), reference.decoder_block_att[0].bn.mean, atol=1e-5)
        np.testing.assert_allclose(bn.moving_variance.numpy(), reference.decoder_block_att[0].bn.var, rtol=1e-4)
    finally:
        for v, value in zip(model.variables, saved):
            v.assign(value)


# ----------------------------------------------------------------------------- contract


def test_registered_with_segnet_mapping_encoder():
    from mtpsl_tf.methods.mtpsl.encoders import MAPPING_ENCODERS

    assert BACKBONES.get("segnet_mtan") is not BACKBONES.get("segnet")
    assert MAPPING_ENCODERS.get("segnet_mtan") is MAPPING_ENCODERS.get("segnet")


def test_shapes_and_size_rule(model):
    net = model
    out = net(tf.zeros([1, 32, 96, 3]))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "semantic": (1, 32, 96, 5), "depth": (1, 32, 96, 1), "normal": (1, 32, 96, 3), "feature": (1, 1, 3, 8)}
    assert net.input_multiple == 32 and net.feature_stride == 32
    with pytest.raises(ValueError, match="SegNetMTAN input height must be a positive multiple of 32, got 48"):
        net(tf.zeros([1, 48, 64, 3]))


def test_task_branches_are_not_shared(model):
    """Gates and heads are per task (head_layers), attention conv blocks are shared: what
    gradient weightings differentiate each task's loss with respect to."""
    own = {id(v) for layer in model.head_layers().values() for v in layer.trainable_variables}
    shared = {id(v) for v in model.shared_trainable_variables()}
    assert own and not own & shared and len(own) + len(shared) == len(model.trainable_variables)
    for j in (0, 4):
        assert {id(v) for v in model.encoder_block_att[j].trainable_variables} <= shared
        assert {id(v) for v in model.branches["depth"].encoder_gates[j].trainable_variables} <= own
    assert id(model.last_shared_kernel()) == id(model.conv_block_dec[0][-1].convs[-1].kernel)
    assert model.task_heads["depth"] is model.branches["depth"].head


def test_get_config_round_trip(model):
    images = tf.constant(_images(seed=2, shape=(1, 32, 32, 3)))
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert isinstance(clone, SegNetMTAN) and clone.get_config() == model.get_config()
    clone(images)
    assert len(clone.variables) == len(model.variables)
    for a, b in zip(clone.variables, model.variables):
        assert a.shape == b.shape and a.name == b.name
        a.assign(b)
    got, want = clone(images), model(images)
    for key in want:
        np.testing.assert_array_equal(got[key].numpy(), want[key].numpy())


def test_pretrained_is_refused():
    with pytest.raises(ValueError, match="--pretrained='w.pth': the segnet_mtan backbone"):
        BACKBONES.get("segnet_mtan")(heads=HEADS, pretrained="w.pth")
