"""LiteRT layer forms (mtpsl_tf.models.registry.LITERT_FORMS): direct dilated convolutions and
logit heads give the Keras outputs and make the exported ResNet-18+ASPP one XNNPACK partition."""

import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.models.dilated_conv import DilatedConv2D, direct_dilation
from mtpsl_tf.models.logit_heads import logit_heads
from mtpsl_tf.models.resnet import ResNetASPP

HEADS = {"seg": {"channels": 3, "activation": "log_softmax"}, "depth": {"channels": 1, "activation": "linear"}}
TASKS = [types.SimpleNamespace(name=name, **spec) for name, spec in HEADS.items()]
SIZE = 32
NOT_XNNPACK = {"SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND", "TILE", "LOG_SOFTMAX"}


def _tiny_resnet():
    keras.utils.set_random_seed(3)
    model = ResNetASPP(HEADS, filters=[4, 4, 8, 8, 8], aspp_channels=4, atrous_rates=(2, 3, 5))
    model(tf.zeros([1, SIZE, SIZE, 3]))
    # Non-trivial BatchNorm statistics, so the folded constants matter.
    for var in model.non_trainable_variables:
        var.assign(np.random.default_rng(len(var.path)).uniform(0.5, 1.5, var.shape).astype(np.float32))
    return model


@pytest.mark.parametrize("padding,dilation", [("same", 2), ("valid", 3), ("same", (2, 3))])
def test_direct_dilation_equals_space_to_batch(padding, dilation):
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 13, 11, 3)).astype(np.float32))
    conv = DilatedConv2D(5, 3, padding=padding, dilation_rate=dilation)
    expected = conv(x).numpy()
    conv.dilation_ops = "direct"
    np.testing.assert_allclose(conv(x).numpy(), expected, atol=1e-5)
    clone = DilatedConv2D.from_config(conv.get_config())
    assert clone.dilation_ops == "direct" and clone.dilation_rate == conv.dilation_rate
    with pytest.raises(ValueError, match="dilation_ops"):
        DilatedConv2D(5, 3, dilation_ops="atrous")


def test_forms_switch_and_restore():
    model = _tiny_resnet()
    convs = [layer for layer in model._flatten_layers() if isinstance(layer, DilatedConv2D)]
    dilated = [c for c in convs if max(c.dilation_rate) > 1]
    # backbone: layer3 3 dilated convs, layer4 4; each head's ASPP: one per atrous rate
    assert len(dilated) == 3 + 4 + 3 * len(HEADS)
    with direct_dilation(model) as count, logit_heads(model) as heads:
        assert count == len(dilated) and heads == 1
        assert {c.dilation_ops for c in dilated} == {"direct"}
        assert {c.dilation_ops for c in convs if c not in dilated} == {"space_to_batch"}
        assert model.task_heads["seg"].activation == "linear" and model.task_heads["depth"].activation == "linear"
    assert {c.dilation_ops for c in convs} == {"space_to_batch"}
    assert model.task_heads["seg"].activation == "log_softmax"
    with direct_dilation(model, "int8") as count, logit_heads(model, "int8") as heads:  # int8 keeps log_softmax
        assert count == len(dilated) and heads == 0 and model.task_heads["seg"].activation == "log_softmax"


def test_postprocess_gives_the_same_probabilities_from_logits_and_log_probabilities():
    from mtpsl_export import contract

    logits = np.random.default_rng(1).normal(scale=4.0, size=(2, 3, 4, 3)).astype(np.float32)
    shifted = logits - np.log(np.exp(logits).sum(-1, keepdims=True))  # log_softmax
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    for value in (logits, shifted):
        out = contract.postprocess({"seg": tf.constant(value), "depth": tf.zeros([2, 3, 4, 1])}, TASKS)
        np.testing.assert_allclose(out["seg_probs"].numpy(), probs, atol=1e-6)
        np.testing.assert_array_equal(out["seg_label"].numpy(), probs.argmax(-1))


def _convert(model, forms, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from mtpsl_export import writers

    with writers.litert_forms(model, writers.resolve_litert_forms(forms)):
        saved = writers.write_saved_model(model, TASKS, SIZE, SIZE, str(tmp_path / f"sm_{forms}"), batch=1,
                                          uint8=False)
    interpreter = Interpreter(model_content=writers.convert_tflite(saved, "float32"), num_threads=1)
    runner = interpreter.get_signature_runner("serving_default")
    return interpreter, runner


def test_resnet_aspp_converts_to_one_xnnpack_partition_with_keras_outputs(tmp_path):
    """Without the forms (measured, docs/EXPORT.md) the graph kept SPACE_TO_BATCH_ND /
    BATCH_TO_SPACE_ND per dilated ASPP conv, TILE and LOG_SOFTMAX: 4 partitions."""
    from mtpsl_export import contract

    model = _tiny_resnet()
    images = np.random.default_rng(5).uniform(size=(1, SIZE, SIZE, 3)).astype(np.float32)
    expected = {k: v.numpy() for k, v in contract.postprocess(model(images, training=False), TASKS).items()}
    interpreter, runner = _convert(model, "all", tmp_path)
    got = runner(image=images)
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    assert ops.count("DELEGATE") == 1 and not NOT_XNNPACK & set(ops), ops
    assert "CONV_2D" in ops and "SOFTMAX" in ops
    for name in ("seg_probs", "depth"):
        np.testing.assert_allclose(got[name], expected[name], atol=1e-4, err_msg=name)
    np.testing.assert_array_equal(got["seg_label"], expected["seg_label"])


def test_unknown_form_names_the_flag():
    from mtpsl_export import writers

    assert writers.resolve_litert_forms("none") == ()
    assert writers.resolve_litert_forms("logit_heads,direct_dilation") == ("direct_dilation", "logit_heads")
    with pytest.raises(ValueError, match="--litert_forms=.*'fold'"):
        writers.resolve_litert_forms("fold")
