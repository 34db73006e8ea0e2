"""The weightings through the train.py path (flags -> config -> run): loss-based and
gradient-based weightings with `sl` and `mtpsl` in the one-label setting, the weights logged
(TensorBoard per step, history.json per epoch), their state checkpointed and resumed exactly,
under mixed_float16 too. (The fixed weighting's absent logs: tests/test_train.py.)"""

import json

import numpy as np
import pytest
import tensorflow as tf

from tests_helpers import SMOKE, checkpoint_variables, flags_for, tiny_config

TASKS = ("semantic", "depth", "normal")


def _step_scalars(model_dir):
    """tag -> values of the per-step TensorBoard scalars in logs/steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(model_dir / "logs" / "steps"), size_guidance={"tensors": 0})
    acc.Reload()
    return {tag: [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)] for tag in acc.Tags()["tensors"]}


def _logged_weights(model_dir, epoch=-1):
    """The per-task weights in history.json's `epoch` entry: array [3]."""
    train = json.loads((model_dir / "history.json").read_text())[epoch]["train"]
    return np.array([train[f"weight/{t}"] for t in TASKS])


def _assert_bounded(weights):
    """Loss scaling left the weights finite, positive and bounded."""
    assert np.isfinite(weights).all() and (weights > 0).all() and (weights < 10).all(), weights


def _assert_logged(model_dir, steps_per_epoch, epochs, stateful):
    """Weights finite, some positive, in history.json per epoch and TensorBoard per step; the
    weighting's variables (log-variances, GradNorm's weights and first losses, DWA's epoch
    means) checkpointed, MGDA's (recomputed every step) not."""
    history = json.loads((model_dir / "history.json").read_text())
    assert len(history) == epochs
    weights = _logged_weights(model_dir)
    assert np.isfinite(weights).all() and (weights > 0).any()
    steps = _step_scalars(model_dir)
    assert {f"weight/{t}" for t in TASKS} <= set(steps)
    assert len(steps["weight/depth"]) == steps_per_epoch * epochs  # a value per step
    assert bool(checkpoint_variables(model_dir, "weighting/", optimizer_slots=False)) == stateful


def _assert_same_state(straight, resumed):
    for prefix in ("network/", "weighting/"):
        a, b = (checkpoint_variables(d, prefix, optimizer_slots=False) for d in (straight, resumed))
        assert a.keys() == b.keys() and a
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(_logged_weights(straight), _logged_weights(resumed), rtol=1e-5)


@pytest.mark.parametrize("weighting,epochs,precision", [("uncertainty", 2, "mixed_float16"), ("dwa", 3, "float32")])
def test_weighting_trains_logs_and_resumes_exactly(tmp_path, weighting, epochs, precision):
    """`epochs` straight == `epochs - 1` then 1 more, one-label: the network, the weighting's
    variables (trained by their optimiser state; uncertainty under mixed_float16, i.e. with loss
    scaling) and the logged weights (dwa's third-epoch weights need the restored epoch means)."""
    from mtpsl_tf.training.run import run

    flags = SMOKE + [f"--weighting={weighting}", "--setting=onelabel", f"--precision={precision}"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    report = run(tiny_config(tmp_path, straight, flags=flags + [f"--epochs={epochs}"]))
    assert np.isfinite(list(report["last"]["metrics"].values())).all()
    _assert_logged(straight, steps_per_epoch=2, epochs=epochs, stateful=True)  # 8 images, batch 4
    run(tiny_config(tmp_path, resumed, flags=flags + [f"--epochs={epochs - 1}"]))
    run(tiny_config(tmp_path, resumed, flags=flags + [f"--epochs={epochs}"]))
    _assert_same_state(straight, resumed)
    weights = _logged_weights(straight)
    if weighting == "dwa":
        assert not np.allclose(weights, 1.0)  # the third epoch used loss-ratio weights
    else:  # float16 compute
        _assert_bounded(weights)


@pytest.mark.parametrize("method,weighting,stateful,precision", [
    ("sl", "mgda", False, "float32"),
    pytest.param("mtpsl", "uncertainty", True, "float32", marks=pytest.mark.slow),
    ("mtpsl", "gradnorm", True, "mixed_float16")])
def test_weighting_trains_and_logs_its_weights(tmp_path, method, weighting, stateful, precision):
    """One-label, one epoch; under mixed_float16 GradNorm's weights (trained by
    `variable_gradients`) stay finite, positive and bounded (a smoke test of the loss scaling:
    Adam is nearly scale-invariant, so this does not prove the unscaling)."""
    from mtpsl_tf.training.run import run

    model_dir = tmp_path / "run"
    report = run(tiny_config(tmp_path, model_dir, flags=flags_for(method) + [
        f"--method={method}", f"--weighting={weighting}", "--setting=onelabel", "--epochs=1",
        f"--precision={precision}"]))
    assert np.isfinite(list(report["last"]["metrics"].values())).all()
    _assert_logged(model_dir, steps_per_epoch=2, epochs=1, stateful=stateful)
    if precision == "mixed_float16":
        _assert_bounded(_logged_weights(model_dir))


@pytest.mark.parametrize("weighting", [pytest.param("dwa", marks=pytest.mark.slow), "pcgrad", "cagrad", "famo"])
def test_other_weightings_take_a_training_step(tmp_path, weighting):
    from mtpsl_tf.training.run import run

    model_dir = tmp_path / "run"
    report = run(tiny_config(tmp_path, model_dir, flags=SMOKE + [
        f"--weighting={weighting}", "--setting=onelabel", "--epochs=1", "--steps_per_epoch=1"]))
    assert np.isfinite(list(report["last"]["metrics"].values())).all()
    train = json.loads((model_dir / "history.json").read_text())[0]["train"]
    assert np.isfinite([v for v in train.values()]).all()


def test_segnet_last_shared_kernel_is_the_last_decoder_conv():
    """GradNorm's W: SegNet's decoder runs conv_block_dec[4] .. [0], so [0] is last."""
    from mtpsl_tf.data.registry import DATASETS
    from mtpsl_tf.models.registry import BACKBONES

    tasks = DATASETS.get("synthetic").tasks()
    net = BACKBONES.get("segnet")(heads={t.name: t.head_spec for t in tasks}, filters=[4, 4, 8, 8, 8])
    net(tf.zeros([1, 32, 32, 3]))
    kernel = net.last_shared_kernel()
    assert "conv_block_dec_0_0" in kernel.path and any(kernel is v for v in net.shared_trainable_variables())


@pytest.mark.slow
def test_famo_trains_under_mixed_float16(tmp_path):
    """FAMO's own variable group under loss scaling (uncertainty and gradnorm: above)."""
    from mtpsl_tf.training.run import run

    model_dir = tmp_path / "run"
    run(tiny_config(tmp_path, model_dir, flags=SMOKE + ["--weighting=famo", "--epochs=1", "--precision=mixed_float16"]))
    _assert_bounded(_logged_weights(model_dir, 0))
