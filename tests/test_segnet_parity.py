"""SegNet against the authors' PyTorch SegNet (fixtures in ../shared/parity, see its README).

Tolerances (the fixture README's measured agreement): inference outputs and the feature 1e-5
absolute; training-mode outputs 1e-4 relative to each output's max |value| (normals 3e-3
absolute, the L2 normalisation amplifies rounding at a few pixels); losses 1e-5 relative;
gradients 1e-3 relative to the reference gradient's max |value|, or twice the float32 rounding
floor measured by feeding the batch in reverse order, whichever is larger.
"""

import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.methods.supervised import masked_task_loss
from mtpsl_tf.models.layers import BatchNorm
from mtpsl_tf.models.segnet import SegNet
from mtpsl_tf.interop.segnet import assign_torch_state, torch_name_map
from mtpsl_tf.tasks.depth import Depth
from mtpsl_tf.tasks.normal import Normal
from mtpsl_tf.tasks.semantic import Semantic

FILTERS = [8, 16, 32, 64, 64]
NYU_HEADS = {
    "semantic": {"channels": 13, "activation": "log_softmax"},
    "depth": {"channels": 1, "activation": "linear"},
    "normal": {"channels": 3, "activation": "l2_normalize"},
}
TASKS = [Semantic(13), Depth(), Normal()]
OUTPUT_KEYS = {"semantic": "semantic_logprob", "depth": "depth", "normal": "normal"}


def torch_state(weights):
    """The SegNet's tensors (prefix `model/` stripped)."""
    return {k[len("model/"):]: v for k, v in weights.items() if k.startswith("model/")}


def built_segnet(heads=NYU_HEADS, variant="standard", filters=FILTERS, size=(64, 96)) -> SegNet:
    model = SegNet(heads, variant=variant, filters=filters)
    model(tf.zeros([1, *size, 3]), training=False)
    return model


@pytest.fixture(scope="module")
def nyu_segnet():
    return built_segnet()


@pytest.fixture
def model(nyu_segnet, parity_weights):
    """The SegNet with the reference weights re-assigned for each test (a training-mode call
    moves the BatchNorm running statistics)."""
    unused = assign_torch_state(nyu_segnet, torch_state(parity_weights))
    assert unused == ["logsigma"]
    return nyu_segnet


def labels(parity):
    return {"semantic": parity["seg_label"].astype(np.int32), "depth": parity["depth_label"],
            "normal": parity["normal_label"]}


def batch_losses(outputs, parity):
    """The reference's batch-level `model_fit` losses via our 'batch' reduction, all labelled."""
    ones = tf.ones([2])
    return {t.name: masked_task_loss(t, outputs[t.name], labels(parity)[t.name], ones,
                                     global_batch_size=2, reduction="batch") for t in TASKS}


def torch_variables(model):
    """torch parameter name -> (our variable, is a conv kernel needing OIHW<->HWIO)."""
    out = {}
    for layer, prefix in torch_name_map(model):
        if isinstance(layer, BatchNorm):
            out[f"{prefix}.weight"], out[f"{prefix}.bias"] = (layer.gamma, False), (layer.beta, False)
        else:
            out[f"{prefix}.weight"], out[f"{prefix}.bias"] = (layer.kernel, True), (layer.bias, False)
    return out


def test_inference_outputs_match(model, parity):
    out = model(parity["x"], training=False)
    for task, key in OUTPUT_KEYS.items():
        np.testing.assert_allclose(out[task].numpy(), parity[f"eval_{key}"], atol=1e-5, rtol=0, err_msg=task)
    np.testing.assert_allclose(out["feature"].numpy(), parity["eval_feat"], atol=1e-5, rtol=0)


def test_training_mode_outputs_match(model, parity):
    out = model(parity["x"], training=True)
    for task, key in OUTPUT_KEYS.items():
        ref = parity[f"train_{key}"]
        atol = 3e-3 if task == "normal" else 1e-4 * np.abs(ref).max()
        np.testing.assert_allclose(out[task].numpy(), ref, atol=atol, rtol=0, err_msg=task)


def test_eval_losses_match_reference_batch_reduction(parity):
    outputs = {t: tf.constant(parity[f"eval_{k}"]) for t, k in OUTPUT_KEYS.items()}
    for task, value in batch_losses(outputs, parity).items():
        np.testing.assert_allclose(float(value), float(parity[f"eval_loss_{task}"]), rtol=1e-5, err_msg=task)


def _training_gradients(model, parity, names, reverse=False):
    """Total training loss and its gradients (OIHW for conv kernels) w.r.t. the named variables;
    `reverse` feeds the batch in reverse order (the same sum, rounded in another order)."""
    p = {k: (v[::-1].copy() if reverse and k in ("x", "seg_label", "depth_label", "normal_label") else v)
         for k, v in parity.items()}
    with tf.GradientTape() as tape:
        out = model(p["x"], training=True)
        total = tf.add_n(list(batch_losses(out, p).values()))
    variables = torch_variables(model)
    grads = tape.gradient(total, [variables[n][0] for n in names])
    return total, [np.transpose(g.numpy(), (3, 2, 0, 1)) if variables[n][1] else g.numpy()
                   for n, g in zip(names, grads)]


def test_training_loss_and_gradients_match(model, parity, parity_weights):
    names = [k[len("grad/"):] for k in parity if k.startswith("grad/")]
    assert names, "fixture has no grad/ entries"
    total, grads = _training_gradients(model, parity, names)
    np.testing.assert_allclose(float(total), float(parity["train_loss_total"]), rtol=1e-5)
    # float32 rounding floor of this gradient on this machine: the same batch in reverse order
    # (mathematically the same sum). On AVX-512 CPUs it moves the first convs' gradients by up
    # to ~7e-3 of their max, above the fixture's 1e-3; the bound is 1e-3 or twice that floor.
    assign_torch_state(model, torch_state(parity_weights))  # the call above moved BN statistics
    _, reordered = _training_gradients(model, parity, names, reverse=True)
    for name, ours, again in zip(names, grads, reordered):
        ref = parity[f"grad/{name}"]
        assert ours.shape == ref.shape, name
        atol = max(1e-3 * np.abs(ref).max(), 2.0 * np.abs(ours - again).max())
        np.testing.assert_allclose(ours, ref, atol=atol, rtol=0, err_msg=name)


def test_missing_tensors_raise_keyerror_naming_them(nyu_segnet, parity_weights):
    state = torch_state(parity_weights)
    del state["encoder_block.0.0.weight"], state["pred_task3.1.bias"]
    with pytest.raises(KeyError, match=r"encoder_block\.0\.0\.weight"):
        assign_torch_state(nyu_segnet, state)


def test_wrong_shape_raises_valueerror(nyu_segnet, parity_weights):
    """(Uses the shared model: the `model` fixture re-assigns every tensor before use.)"""
    state = torch_state(parity_weights)
    state["decoder_block.1.1.running_var"] = np.ones([3], np.float32)
    with pytest.raises(ValueError, match=r"decoder_block\.1\.1"):
        assign_torch_state(nyu_segnet, state)


def test_wider_model_rejects_narrow_checkpoint(parity_weights):
    with pytest.raises(ValueError, match="shape"):
        assign_torch_state(built_segnet(filters=[8, 16, 32, 64, 128], size=(32, 32)), torch_state(parity_weights))


def conv_units(model):
    return [(layer, prefix) for layer, prefix in torch_name_map(model) if not isinstance(layer, BatchNorm)]


def test_variants_layer_counts_and_widths():
    tiny = [4, 4, 8, 8, 8]
    heads = {"depth": {"channels": 1, "activation": "linear"}}
    standard = built_segnet(heads, "standard", tiny, size=(32, 32))
    deep = built_segnet(heads, "deep", tiny, size=(32, 32))
    # 5 encoder + 5 decoder + 8 enc conv blocks + 8 dec conv blocks = 26 convs, plus 2 per head
    assert len(conv_units(standard)) == 26 + 2
    assert len(conv_units(deep)) == 2 * 26 + 2
    assert all(block.depth == 2 for block in deep.encoder_block)
    assert any(prefix.endswith(".3") for _, prefix in conv_units(deep))  # Sequential index 3
    assert standard.encoder_block[4].convs[0].kernel.shape == (3, 3, 8, 8)
    assert standard.decoder_block[0].convs[0].kernel.shape == (3, 3, 4, 4)

    wide = SegNet(heads, variant="wide")
    assert wide.filters == [64, 128, 256, 512, 1024]
    assert SegNet(heads).filters == [64, 128, 256, 512, 512]
    wide_small = built_segnet(heads, "wide", [4, 4, 8, 8, 16], size=(32, 32))
    assert wide_small(tf.zeros([1, 32, 32, 3]))["feature"].shape == (1, 1, 1, 16)
    assert wide_small.decoder_block[4].convs[0].kernel.shape == (3, 3, 16, 8)


def test_two_task_cityscapes_heads():
    heads = {"semantic": {"channels": 7, "activation": "log_softmax"},
             "depth": {"channels": 1, "activation": "linear"}}
    model = built_segnet(heads, filters=[4, 4, 8, 8, 8], size=(32, 64))
    out = model(tf.random.uniform([2, 32, 64, 3]), training=True)
    assert sorted(out) == ["depth", "feature", "semantic", "shared"]
    assert out["shared"].shape == (2, 32, 64, 4)  # the decoder output both heads read
    assert out["semantic"].shape == (2, 32, 64, 7) and out["depth"].shape == (2, 32, 64, 1)
    np.testing.assert_allclose(tf.reduce_sum(tf.exp(out["semantic"]), -1).numpy(), 1.0, rtol=1e-5)
    assert [p for _, p in torch_name_map(model) if p.startswith("pred_task")] == [
        "pred_task1.0", "pred_task1.1", "pred_task2.0", "pred_task2.1"]


@pytest.mark.parametrize("size", [(48, 64), (32, 80), (16, 32)])
def test_input_size_not_multiple_of_32_raises(size):
    model = SegNet({"depth": {"channels": 1, "activation": "linear"}}, filters=[4, 4, 8, 8, 8])
    with pytest.raises(ValueError, match="multiple of 32"):
        model(tf.zeros([1, *size, 3]))


def test_bad_constructor_arguments_raise():
    heads = {"depth": {"channels": 1, "activation": "linear"}}
    with pytest.raises(ValueError, match="variant"):
        SegNet(heads, variant="huge")
    with pytest.raises(ValueError, match="5 filter"):
        SegNet(heads, filters=[4, 4])
    with pytest.raises(ValueError, match="softplus"):
        SegNet({"depth": {"channels": 1, "activation": "softplus"}})
    with pytest.raises(ValueError, match="at least one"):
        SegNet({})
